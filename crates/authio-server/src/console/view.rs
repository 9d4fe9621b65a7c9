//! The console's page model: a page is a title, navigation and a list of blocks (notices,
//! facts, tables, forms, live regions), rendered by one askama template. Handlers build pages
//! from these parts instead of each carrying its own markup; askama escapes every value.
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ConsoleUser;

pub struct NavItem {
    pub href: String,
    pub label: String,
    pub current: bool,
}

pub struct Notice {
    /// `ok`, `info` or `error`.
    pub kind: &'static str,
    pub text: String,
}

pub struct Secret {
    pub label: String,
    pub value: String,
}

pub struct Table {
    pub caption: String,
    pub head: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    pub empty: String,
}

pub enum Cell {
    Text(String),
    Code(String),
    Link(String, String),
    /// A kind (`ok`, `warn`, `bad`, or empty) and a label.
    Badge(&'static str, String),
    Action(FormView),
}

pub enum FieldKind {
    /// `text`, `email`, `url`, `search`, `date`.
    Text(&'static str),
    Hidden,
    Select(Vec<(String, String)>),
    /// A switch whose value is `on` when checked.
    Switch,
    /// A checkbox among several with the same name.
    Check,
}

pub struct Field {
    pub kind: FieldKind,
    pub name: &'static str,
    pub label: String,
    pub value: String,
    pub checked: bool,
    pub required: bool,
    pub placeholder: Option<String>,
}

impl Field {
    pub fn text(kind: &'static str, name: &'static str, label: &str, value: &str) -> Self {
        Field {
            kind: FieldKind::Text(kind),
            name,
            label: label.into(),
            value: value.into(),
            checked: false,
            required: false,
            placeholder: None,
        }
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn placeholder(mut self, p: &str) -> Self {
        self.placeholder = Some(p.into());
        self
    }

    pub fn hidden(name: &'static str, value: &str) -> Self {
        Field { kind: FieldKind::Hidden, ..Field::text("text", name, "", value) }
    }

    pub fn select(name: &'static str, label: &str, options: Vec<(String, String)>, value: &str) -> Self {
        Field { kind: FieldKind::Select(options), ..Field::text("text", name, label, value) }
    }

    pub fn switch(name: &'static str, label: &str, on: bool) -> Self {
        Field { kind: FieldKind::Switch, ..Field::text("text", name, label, if on { "on" } else { "" }) }
    }

    pub fn check(name: &'static str, label: &str, value: &str, checked: bool) -> Self {
        Field { kind: FieldKind::Check, checked, ..Field::text("text", name, label, value) }
    }
}

pub struct FormView {
    pub action: String,
    pub get: bool,
    pub fields: Vec<Field>,
    pub submit: String,
    pub danger: bool,
    pub inline: bool,
    pub disabled: bool,
    /// Submit when a switch flips (with script; the button stays for those without).
    pub autosubmit: bool,
}

impl FormView {
    /// A POST form (its CSRF token is added by the template).
    pub fn post(action: impl Into<String>, submit: &str) -> Self {
        FormView {
            action: action.into(),
            get: false,
            fields: Vec::new(),
            submit: submit.into(),
            danger: false,
            inline: false,
            disabled: false,
            autosubmit: false,
        }
    }

    pub fn get(action: impl Into<String>, submit: &str) -> Self {
        FormView { get: true, ..FormView::post(action, submit) }
    }

    /// A one-button form in a table cell.
    pub fn button(action: impl Into<String>, submit: &str, danger: bool) -> Self {
        FormView { inline: true, danger, ..FormView::post(action, submit) }
    }

    pub fn field(mut self, f: Field) -> Self {
        self.fields.push(f);
        self
    }

    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Viewers see forms greyed out; the server refuses them anyway.
    pub fn disabled_if(mut self, read_only: bool) -> Self {
        self.disabled = read_only;
        self
    }
}

/// A region that refreshes itself (with script) from `url`, a fragment of [`LiveView`].
pub struct Live {
    pub url: String,
    pub view: LiveView,
}

pub struct LiveView {
    pub title: String,
    pub state: String,
    pub percent: Option<i64>,
    pub lines: Vec<String>,
    /// Nothing more will change: stop refreshing.
    pub finished: bool,
}

/// A live region's content alone, for its refreshes.
#[derive(Template)]
#[template(path = "console_fragment.html")]
struct LiveFragment<'a> {
    v: &'a LiveView,
}

impl LiveView {
    pub fn fragment(&self) -> Response {
        let mut resp = match (LiveFragment { v: self }).render() {
            Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering a console fragment");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        };
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

pub struct PlanView {
    pub name: &'static str,
    pub current: bool,
    pub includes: Vec<&'static str>,
}

pub enum Block {
    Heading(String),
    Para(String),
    Notice(Notice),
    Secret(Secret),
    Facts(Vec<(String, String)>),
    Table(Table),
    Form(FormView),
    Live(Live),
    Plans(Vec<PlanView>),
}

impl Block {
    pub fn notice(kind: &'static str, text: impl Into<String>) -> Self {
        Block::Notice(Notice { kind, text: text.into() })
    }

    pub fn heading(text: impl Into<String>) -> Self {
        Block::Heading(text.into())
    }

    pub fn table(caption: impl Into<String>, head: Vec<&'static str>, rows: Vec<Vec<Cell>>, empty: &str) -> Self {
        Block::Table(Table { caption: caption.into(), head, rows, empty: empty.into() })
    }
}

#[derive(Template)]
#[template(path = "console.html")]
pub struct PageView {
    pub title: String,
    pub who: Option<String>,
    pub csrf: String,
    pub nav: Vec<NavItem>,
    pub subnav: Vec<NavItem>,
    pub subnav_label: String,
    pub blocks: Vec<Block>,
}

impl PageView {
    pub fn new(title: impl Into<String>, user: Option<&ConsoleUser>) -> Self {
        let mut nav = Vec::new();
        if let Some(u) = user {
            if u.is_operator() {
                for (href, label) in [
                    ("/console/tenants", "Tenants"),
                    ("/console/requests", "Dedicated DB requests"),
                    ("/console/hosts", "Dedicated hosts"),
                    ("/console/audit", "Audit log"),
                ] {
                    nav.push(NavItem { href: href.into(), label: label.into(), current: false });
                }
            }
            for (href, label) in [("/dashboard", "Dashboard"), ("/billing", "Billing")] {
                nav.push(NavItem { href: href.into(), label: label.into(), current: false });
            }
        }
        PageView {
            title: title.into(),
            who: user.map(|u| u.email.clone()),
            csrf: user.map(|u| u.csrf.clone()).unwrap_or_default(),
            nav,
            subnav: Vec::new(),
            subnav_label: String::new(),
            blocks: Vec::new(),
        }
    }

    /// Mark the top navigation entry whose path starts this page's.
    pub fn at(mut self, path: &str) -> Self {
        for n in &mut self.nav {
            n.current = path.starts_with(&n.href);
        }
        self
    }

    pub fn subnav(mut self, label: &str, items: Vec<(String, &str)>, current: &str) -> Self {
        self.subnav_label = label.into();
        self.subnav =
            items.into_iter().map(|(href, l)| NavItem { current: href == current, href, label: l.into() }).collect();
        self
    }

    pub fn block(mut self, b: Block) -> Self {
        self.blocks.push(b);
        self
    }

    pub fn blocks(mut self, b: impl IntoIterator<Item = Block>) -> Self {
        self.blocks.extend(b);
        self
    }

    pub fn render(&self, status: StatusCode) -> Response {
        let mut resp = match Template::render(self) {
            Ok(html) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering a console page");
                (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
            }
        };
        console_headers(resp.headers_mut());
        resp
    }

    pub fn ok(&self) -> Response {
        self.render(StatusCode::OK)
    }
}

/// No caching of pages holding tenants' data; no framing; only this origin's script and
/// styles; forms post only here.
pub fn console_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}
