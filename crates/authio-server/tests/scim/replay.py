"""Reference runner for the provider traffic fixtures (okta.json, entra.json); standard library only.

Usage:
    python3 replay.py [--keep-going] BASE_URL TOKEN FIXTURE.json [FIXTURE.json ...]

Replays each file's steps in order against BASE_URL (a fresh, empty directory's SCIM base,
e.g. http://127.0.0.1:8080/scim/v2/<directory_id>), prints one line per step, stops a file at
its first failing step (unless --keep-going), and exits 0 only if every step of every file passed. README.md describes
the step format; this script is what it means, the Rust runner should do the same.
"""

import json
import re
import sys
import urllib.error
import urllib.request

VAR = re.compile(r"\{\{([A-Za-z0-9_]+)\}\}")
MISSING = object()


def substitute(value, variables):
    """Replaces {{name}} in every string (keys included) with a saved value."""
    if isinstance(value, str):
        def one(match):
            if match.group(1) not in variables:
                raise KeyError(f"{{{{{match.group(1)}}}}} used before it was saved")
            return variables[match.group(1)]
        return VAR.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {substitute(k, variables): substitute(v, variables) for k, v in value.items()}
    return value


def pointer(document, ptr):
    """Resolves an RFC 6901 JSON pointer; MISSING when a step does not exist."""
    if ptr == "":
        return document
    node = document
    for token in ptr.lstrip("/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return MISSING
    return node


def same(expected, actual):
    """JSON equality that tells booleans from numbers and strings ("False" != false, 1 != true)."""
    if type(expected) is not type(actual):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) \
                and not isinstance(expected, bool) and not isinstance(actual, bool):
            return expected == actual
        return False
    if isinstance(expected, list):
        return len(expected) == len(actual) and all(map(same, expected, actual))
    if isinstance(expected, dict):
        return expected.keys() == actual.keys() and all(same(v, actual[k]) for k, v in expected.items())
    return expected == actual


def run_step(base_url, token, step, variables):
    path = substitute(step["path"], variables)
    body = substitute(step["body"], variables) if "body" in step else None
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url + path, data=data, method=step["method"])
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/scim+json")
    if data is not None:
        request.add_header("Content-Type", "application/scim+json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()

    wanted = step["status"] if isinstance(step["status"], list) else [step["status"]]
    problems = []
    if status not in wanted:
        problems.append(f"status {status}, expected {step['status']}")
    try:
        document = json.loads(raw) if raw.strip() else None
    except ValueError:
        document = None
        problems.append(f"body is not JSON: {raw[:200]!r}")

    for name, ptr in step.get("save", {}).items():
        value = pointer(document, ptr)
        if value is MISSING or value is None:
            problems.append(f"save {name}: {ptr} is missing")
        else:
            variables[name] = value if isinstance(value, str) else json.dumps(value)
    for ptr, expected in substitute(step.get("expect", {}), variables).items():
        actual = pointer(document, ptr)
        if expected is None:
            if actual is not MISSING and actual is not None:
                problems.append(f"{ptr} = {json.dumps(actual)}, expected it absent")
        elif actual is MISSING:
            problems.append(f"{ptr} is missing, expected {json.dumps(expected)}")
        elif not same(expected, actual):
            problems.append(f"{ptr} = {json.dumps(actual)}, expected {json.dumps(expected)}")
    return status, problems, document


def main(argv):
    keep_going = "--keep-going" in argv
    argv = [a for a in argv if a != "--keep-going"]
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    base_url, token, files = argv[0].rstrip("/"), argv[1], argv[2:]
    passed = failed = 0
    for file in files:
        with open(file) as f:
            steps = json.load(f)
        variables = {}
        for number, step in enumerate(steps, 1):
            try:
                status, problems, document = run_step(base_url, token, step, variables)
            except KeyError as error:
                status, problems, document = None, [str(error)], None
            label = f"{file} #{number} {step['method']} {step['name']}"
            if problems:
                failed += 1
                print(f"FAIL\t{label}: {'; '.join(problems)}")
                print(f"\tresponse: {json.dumps(document)[:2000]}")
                if not keep_going:
                    break
                continue
            passed += 1
            print(f"ok\t{label} ({status})")
    print(f"replay: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
