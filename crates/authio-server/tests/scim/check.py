"""Runs the scim2-tester compliance checks (PyPI, python-scim) against one SCIM directory.

Usage:
    .venv/bin/python check.py BASE_URL TOKEN [--include TAG ...] [--exclude TAG ...]
                              [--resource-type NAME ...] [--verbose]

BASE_URL is a directory's SCIM base, e.g. http://127.0.0.1:8080/scim/v2/<directory_id>
(no trailing slash needed); TOKEN is that directory's bearer token, sent as
`Authorization: Bearer TOKEN` on every request.

Prints one line per check result, `STATUS<TAB>[ResourceType] title<TAB>reason`, then a summary
line `scim2-tester: N passed, N failed, N skipped`, and exits 0 only if no check failed
(1 if one did, 2 on bad usage).

What scim2-tester does (0.5.x; read from its source):
  * discovery: GET /ServiceProviderConfig, /ResourceTypes, /ResourceTypes/{id}, /Schemas,
    /Schemas/{id}; the schema every resource type names must be served; GET of an unknown
    /ResourceTypes/{uuid}, /Schemas/{uuid} and /{uuid} must be 404 with a SCIM Error body;
    POST/PUT/PATCH/DELETE on the three discovery endpoints must be 405.
  * per resource type (built from what /Schemas and /ResourceTypes publish): POST, GET by id,
    GET list (the created resource must be on the first page), attributes/excludedAttributes
    on GET by id, GET list and POST /.search, PUT with every writable attribute filled with
    random values, DELETE (204) then GET (404 with a SCIM Error), and PATCH add / replace /
    remove of every writable attribute one at a time, each checked by comparing what the PATCH
    response and a following GET return with what was sent.
  * It sends random data (uuid strings, uuid@uuid.com emails, canonicalValues picked at random,
    references to resources it creates for the purpose) and deletes everything it created after
    each check (best effort: a failing DELETE leaves resources behind).
  * It does not exercise filters, sorting, pagination, bulk, ETags or /Me.

What this script accepts as "not failed" (everything else fails the run):
  * SUCCESS, COMPLIANT, ACCEPTABLE: the server meets a MUST / follows a SHOULD / uses a MAY.
  * DEVIATION: departs from a SHOULD but stays within the RFC; printed, not fatal.
  * SKIPPED, which scim2-tester reports only when
      - the check was left out by --include / --exclude / --resource-type (our own choice);
      - ServiceProviderConfig says patch.supported=false (PATCH checks skipped: the server said
        the feature is unsupported, which RFC 7644 allows; Authio advertises PATCH, so a skip of
        that kind against Authio would show up here as SKIPPED lines, worth a look);
      - POST /.search answered 501 Not Implemented (a SCIM Error): searching across resource
        types is optional (RFC 7644 §3.4.3) and Authio does not offer it;
      - a published schema has no attribute of the kind the check needs.
Failed: ERROR (a MUST broken, or a request/response the client could not accept) and CRITICAL,
and any status this script does not know (a newer scim2-tester). A run in which no check on
Users or Groups ran at all (discovery failed early) also fails, unless --include narrowed it.
"""

import argparse
import sys

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status
from scim2_tester import check_server

PASSED = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE, Status.DEVIATION}
SKIPPED = {Status.SKIPPED}
# Every other status (ERROR, CRITICAL, anything unknown) is a failure.


def one_line(text):
    """Collapses a multi-line reason (PATCH checks print the sent and returned values on
    separate lines) onto one line."""
    return " | ".join(part.strip() for part in str(text or "").splitlines() if part.strip())


def main(argv):
    parser = argparse.ArgumentParser(
        description="Run scim2-tester against a SCIM 2.0 base URL with a bearer token."
    )
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8080/scim/v2/<directory_id>")
    parser.add_argument("token", help="the directory's SCIM bearer token")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="TAG",
        help="run only checks with this tag (repeatable): discovery, service-provider-config, "
        "resource-types, schemas, misc, crud, crud:create, crud:read, crud:read:attributes, "
        "crud:update, crud:delete, patch, patch:add, patch:remove, patch:replace",
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="TAG", help="skip checks with this tag"
    )
    parser.add_argument(
        "--resource-type",
        action="append",
        default=[],
        metavar="NAME",
        help="check only this resource type (User, Group); repeatable",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print the data of failed checks"
    )
    args = parser.parse_args(argv)

    base_url = args.base_url.rstrip("/")
    http = httpx2.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=30.0,
        follow_redirects=False,
    )
    client = SyncSCIMClient(http)

    results = check_server(
        client,
        include_tags=set(args.include) or None,
        exclude_tags=set(args.exclude) or None,
        resource_types=args.resource_type or None,
    )

    passed = failed = skipped = 0
    for result in results:
        if result.status in PASSED:
            passed += 1
        elif result.status in SKIPPED:
            skipped += 1
        else:
            failed += 1
        where = f"[{result.resource_type}] " if result.resource_type else ""
        print(f"{result.status.name}\t{where}{result.title}\t{one_line(result.reason)}")
        if args.verbose and result.status not in PASSED | SKIPPED and result.data is not None:
            print(f"\tdata: {one_line(repr(result.data))}")

    ran_resources = any(
        r.resource_type and r.status not in SKIPPED for r in results
    )
    if not ran_resources and not (args.include or args.exclude or args.resource_type):
        print("FAILED\t(no check on a resource type ran: discovery did not describe the server)")
        failed += 1

    print(f"scim2-tester: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
