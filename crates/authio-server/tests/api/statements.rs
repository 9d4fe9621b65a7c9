//! The statement catalogue: every SQL statement written out in the stores (`authio-core`) and
//! the data layer (`authio-db`) is prepared against the migrated schema, with the parameter
//! types its call site declares (statements are sent unnamed with declared types, so those
//! are the types PostgreSQL will use). A typo, a renamed column or a parameter whose declared
//! type drifted from the column's fails here, in CI, not in production.
//!
//! Statements are found in the source: every string literal that starts with SELECT, INSERT,
//! UPDATE, DELETE or WITH. A call's declared types are the `Type::NAME`s of its parameter
//! list. Statements assembled at run time with `format!` cannot be prepared from the source;
//! they are counted, and their fixed parts (the `*_COLS` lists, the inserts) are literals that
//! are checked where a complete statement uses them.
use std::path::{Path, PathBuf};

use authio_testkit::fresh_shared_db;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

/// One statement as written in the source.
#[derive(Debug)]
struct Statement {
    at: String,
    sql: String,
    /// The call's declared parameter types, in order; `None` when the parameters are not
    /// written out at the call (a parameter array built elsewhere).
    declared: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct Catalogue {
    statements: Vec<Statement>,
    /// `format!` templates whose placeholders are run-time values: not checked here.
    templates: usize,
    /// `format!` templates made of constants: spliced and checked like the rest.
    spliced: usize,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literals of a Rust source file: (byte offset, end offset, value), with escapes
/// and line continuations resolved. Comments and char literals are skipped.
fn literals(src: &str) -> Vec<(usize, usize, String)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\'') or a lifetime ('a): skip either.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = src[start..].find(&close).map(|k| start + k).unwrap_or(b.len());
                out.push((i, end + close.len(), src[start..end].to_owned()));
                i = end + close.len();
            }
            b'"' => {
                let start = i;
                let mut v = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        match b.get(i + 1) {
                            Some(b'\n') => {
                                i += 2;
                                while i < b.len() && (b[i] as char).is_whitespace() {
                                    i += 1;
                                }
                                continue;
                            }
                            Some(b'n') => v.push('\n'),
                            Some(b't') => v.push('\t'),
                            Some(b'"') => v.push('"'),
                            Some(b'\\') => v.push('\\'),
                            Some(b'\'') => v.push('\''),
                            Some(&c) => {
                                v.push('\\');
                                v.push(c as char);
                            }
                            None => {}
                        }
                        i += 2;
                        continue;
                    }
                    let ch = src[i..].chars().next().unwrap();
                    v.push(ch);
                    i += ch.len_utf8();
                }
                out.push((start, i + 1, v));
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

fn is_statement(s: &str) -> bool {
    let t = s.trim_start();
    ["SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH "].iter().any(|k| t.starts_with(k))
        || ["SELECT\n", "WITH\n"].iter().any(|k| t.starts_with(k))
}

/// The `Type::NAME`s of the call a statement literal is the first argument of: the text from
/// the literal's end to the call's closing parenthesis.
fn declared_types(src: &str, from: usize) -> Option<Vec<String>> {
    let rest = &src[from..];
    let after = rest.trim_start();
    if !after.starts_with(',') {
        return None; // not a call's first argument (a const, a format! template, ...)
    }
    let mut depth = 1i32;
    let mut end = rest.len();
    for (k, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    end = k;
                    break;
                }
            }
            _ => {}
        }
    }
    let args = &rest[..end];
    let mut types = Vec::new();
    let mut s = args;
    while let Some(k) = s.find("Type::") {
        s = &s[k + "Type::".len()..];
        types.push(s.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect());
    }
    // Parameters passed as a value built elsewhere (`&row.params()`, `&bind`): not declared here.
    if types.is_empty() && args.trim().trim_start_matches(',').trim() != "&[]" {
        return None;
    }
    Some(types)
}

fn catalogue() -> Catalogue {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root.join("authio-core/src"), &mut files);
    rust_files(&root.join("authio-db/src"), &mut files);
    files.sort();
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let s = std::fs::read_to_string(&f).unwrap();
            (f, s)
        })
        .collect();
    // `const NAME: &str = "...";` anywhere in the two crates: the column lists and fixed
    // statements that templates splice in.
    // A file's own constants come first (several files have a `COLS`); others only when
    // their name is unique across the crates.
    let mut per_file: Vec<std::collections::HashMap<String, String>> = Vec::new();
    let mut global: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for (_, src) in &sources {
        let mut consts = std::collections::HashMap::new();
        for (start, _, lit) in literals(src) {
            let before = src[..start].trim_end();
            if let Some(decl) = before.strip_suffix('=').map(str::trim_end) {
                if let Some(k) = decl.rfind("const ") {
                    let name_ty = &decl[k + "const ".len()..];
                    if let Some((name, ty)) = name_ty.split_once(':') {
                        if ty.trim() == "&str" {
                            let name = name.trim().to_owned();
                            global.entry(name.clone()).and_modify(|v| *v = None).or_insert_with(|| Some(lit.clone()));
                            consts.insert(name, lit);
                        }
                    }
                }
            }
        }
        per_file.push(consts);
    }
    let mut c = Catalogue::default();
    for ((f, src), own) in sources.iter().zip(&per_file) {
        let mut consts = own.clone();
        for (k, v) in &global {
            if let (false, Some(v)) = (consts.contains_key(k), v) {
                consts.insert(k.clone(), v.clone());
            }
        }
        // Test modules hold fixtures, not the stores' statements.
        let cut = src.find("#[cfg(test)]").unwrap_or(src.len());
        for (start, end, lit) in literals(src) {
            if start >= cut || !is_statement(&lit) {
                continue;
            }
            let line = src[..start].matches('\n').count() + 1;
            let at = format!("{}:{line}", f.strip_prefix(&root).unwrap_or(f).display());
            let in_format = src[..start].trim_end().ends_with("format!(");
            if in_format || has_placeholder(&lit) || lit.contains("{}") {
                // A template: checked when every placeholder is a constant of the crates.
                match (in_format, splice(&lit, &consts)) {
                    (true, Some(sql)) => {
                        let call_end = closing_paren(src, end);
                        c.statements.push(Statement { at, sql, declared: declared_types(src, call_end) });
                        c.spliced += 1;
                    }
                    _ => c.templates += 1,
                }
                continue;
            }
            c.statements.push(Statement { at, sql: lit, declared: declared_types(src, end) });
        }
    }
    c
}

/// The end of the call whose argument list `from` is inside (just past its `)`).
fn closing_paren(src: &str, from: usize) -> usize {
    let mut depth = 1i32;
    for (k, ch) in src[from..].char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return from + k + 1;
                }
            }
            _ => {}
        }
    }
    src.len()
}

/// A `format!` template with each `{NAME}` replaced by the constant of that name, or `None`
/// when a placeholder is not a known constant (an inline value, a positional `{}`).
fn splice(template: &str, consts: &std::collections::HashMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix('{') {
            out.push('{');
            rest = lit;
            continue;
        }
        let j = after.find('}')?;
        out.push_str(consts.get(&after[..j])?);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Some(out.replace("}}", "}"))
}

/// `{NAME}` as format! captures it (SQL's own braces are `'{}'` array literals or JSON).
fn has_placeholder(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'{'
            && b.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && s[i + 1..].find('}').is_some_and(|k| {
                s[i + 1..i + 1 + k].chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '?')
            })
    })
}

fn pg_type(name: &str) -> Type {
    match name {
        "UUID" => Type::UUID,
        "TEXT" => Type::TEXT,
        "VARCHAR" => Type::VARCHAR,
        "INT2" => Type::INT2,
        "INT4" => Type::INT4,
        "INT8" => Type::INT8,
        "BOOL" => Type::BOOL,
        "BYTEA" => Type::BYTEA,
        "BYTEA_ARRAY" => Type::BYTEA_ARRAY,
        "TIMESTAMPTZ" => Type::TIMESTAMPTZ,
        "JSONB" => Type::JSONB,
        "JSON" => Type::JSON,
        "TEXT_ARRAY" => Type::TEXT_ARRAY,
        "UUID_ARRAY" => Type::UUID_ARRAY,
        "INT8_ARRAY" => Type::INT8_ARRAY,
        "INET" => Type::INET,
        "FLOAT8" => Type::FLOAT8,
        "OID" => Type::OID,
        "INTERVAL" => Type::INTERVAL,
        other => panic!("a declared type this catalogue does not know: Type::{other}"),
    }
}

/// The highest `$n` in a statement.
fn parameter_count(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    for i in 0..b.len() {
        if b[i] == b'$' {
            let n: String = sql[i + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = n.parse::<usize>() {
                max = max.max(n);
            }
        }
    }
    max
}

#[test]
fn the_scanner_finds_statements_their_types_and_templates() {
    let src = r#"
        let a = tx.query("SELECT id FROM users WHERE id = $1", &[(&id, Type::UUID)]).await?;
        let b = tx.query(&format!("SELECT {COLS} FROM users"), &[]).await?;
        // "SELECT nothing FROM a comment"
        const C: &str = "INSERT INTO t (a) \
                         VALUES ($1)";
        let d = c.query_typed("DELETE FROM t WHERE a = $1 AND b = $2", &[(&a, Type::TEXT), (&b, Type::INT8)]);
    "#;
    let lits: Vec<_> = literals(src).into_iter().filter(|l| is_statement(&l.2)).collect();
    assert_eq!(lits.len(), 4, "{lits:?}");
    assert_eq!(declared_types(src, lits[0].1), Some(vec!["UUID".to_owned()]));
    assert!(has_placeholder(&lits[1].2));
    assert_eq!(lits[2].2, "INSERT INTO t (a) VALUES ($1)");
    assert_eq!(declared_types(src, lits[2].1), None);
    assert_eq!(declared_types(src, lits[3].1), Some(vec!["TEXT".to_owned(), "INT8".to_owned()]));
    assert_eq!(parameter_count(&lits[3].2), 2);
    assert!(!has_placeholder("SELECT '{}'::text[], '{\"a\": 1}'::jsonb"));
    let consts = std::collections::HashMap::from([("COLS".to_owned(), "id, email".to_owned())]);
    assert_eq!(splice("SELECT {COLS} FROM users", &consts).as_deref(), Some("SELECT id, email FROM users"));
    assert_eq!(splice("SELECT {c} FROM {t}", &consts), None);
    let call = r#"tx.query(&format!("SELECT {COLS} FROM u WHERE id = $1"), &[(&id, Type::UUID)])"#;
    let lit = literals(call).remove(0);
    assert_eq!(declared_types(call, closing_paren(call, lit.1)), Some(vec!["UUID".to_owned()]));
}

#[tokio::test]
async fn every_statement_prepares_against_the_schema_with_its_declared_types() {
    let c = catalogue();
    assert!(
        c.statements.len() > 150,
        "found only {} statements: is the scanner reading the source?",
        c.statements.len()
    );
    let db = fresh_shared_db().await;
    let client = authio_db::pool::connect(&db.admin_url, "statement-catalogue").await.unwrap();
    let mut failures = Vec::new();
    let mut typed = 0;
    for s in &c.statements {
        let n = parameter_count(&s.sql);
        let result = match &s.declared {
            Some(names) => {
                typed += 1;
                if names.len() != n {
                    failures.push(format!("{}: declares {} parameter types for {n} parameters", s.at, names.len()));
                    continue;
                }
                let types: Vec<Type> = names.iter().map(|t| pg_type(t)).collect();
                client.prepare_typed(&s.sql, &types).await.map(|st| (st, Some(types)))
            }
            None => client.prepare(&s.sql).await.map(|st| (st, None)),
        };
        match result {
            Ok((st, Some(types))) => {
                if st.params() != types.as_slice() {
                    failures.push(format!("{}: declared {types:?}, PostgreSQL reads {:?}", s.at, st.params()));
                }
            }
            Ok((_, None)) => {}
            // Untyped at the call site (the parameters are built elsewhere, with their types)
            // and not resolvable without those types; names and syntax were checked first.
            Err(e)
                if s.declared.is_none()
                    && [SqlState::INDETERMINATE_DATATYPE, SqlState::AMBIGUOUS_PARAMETER]
                        .iter()
                        .any(|c| e.code() == Some(c)) => {}
            Err(e) => {
                let why = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
                failures.push(format!(
                    "{}: {why}\n    {}",
                    s.at,
                    s.sql.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    eprintln!(
        "statement catalogue: {} statements prepared ({typed} with declared types, {} spliced from constants), \
         {} templates with run-time parts",
        c.statements.len(),
        c.spliced,
        c.templates
    );
    assert!(failures.is_empty(), "{} statements do not fit the schema:\n{}", failures.len(), failures.join("\n"));
}
