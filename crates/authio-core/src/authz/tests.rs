//! Every permission against every kind of principal, on every kind of target, from a table
//! written out by hand (not derived from the rules it checks).
use super::*;

const A: Uuid = Uuid::from_u128(0xa);
const B: Uuid = Uuid::from_u128(0xb);
const P1: Uuid = Uuid::from_u128(0x1);
const P2: Uuid = Uuid::from_u128(0x2);
const Q: Uuid = Uuid::from_u128(0x3);

fn targets() -> [(&'static str, Target); 6] {
    let c = TenantKind::Customer;
    [
        ("own project", Target::Project { tenant_id: A, project_id: P1, tenant_kind: c }),
        ("sibling project", Target::Project { tenant_id: A, project_id: P2, tenant_kind: c }),
        ("other tenant's project", Target::Project { tenant_id: B, project_id: Q, tenant_kind: c }),
        ("own tenant", Target::Tenant { tenant_id: A, tenant_kind: c }),
        ("other tenant", Target::Tenant { tenant_id: B, tenant_kind: c }),
        ("platform", Target::Platform),
    ]
}

fn member(role: MemberRole) -> Principal {
    Principal::Member { tenant_id: A, user_id: Uuid::from_u128(0x77), email: "m@acme.test".into(), role }
}

/// Columns: ProjectRead, ProjectConfigure, UsersRead, UsersManage, CredentialsManage,
/// KeysRotate, AuditRead, TenantRead, TenantManage, PlatformOperate, UsersImpersonate
/// (`Permission::ALL`).
/// A = allowed, D = refused (403), H = hidden (404). Rows: the targets of `targets()`.
fn table() -> Vec<(&'static str, Principal, [&'static str; 6])> {
    let all_a = ["AAAAAAAAAAA"; 6];
    vec![
        (
            "api key",
            Principal::ApiKey { tenant_id: A, project_id: P1, tenant_kind: TenantKind::Customer, key_id: "k".into() },
            ["AAAAAAADDDD", "HHHHHHHHHHH", "HHHHHHHHHHH", "HHHHHHHHHHH", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
        ("operator", Principal::Operator { user_id: "op".into(), name: None }, all_a),
        ("system", Principal::System { name: "console" }, all_a),
        ("tool", Principal::Tool { name: "authio dev" }, all_a),
        (
            "owner",
            member(MemberRole::Owner),
            ["AAAAAAAAADA", "AAAAAAAAADA", "HHHHHHHHHHH", "AAAAAAAAADA", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
        (
            "admin",
            member(MemberRole::Admin),
            ["AAAAAAAAADD", "AAAAAAAAADD", "HHHHHHHHHHH", "AAAAAAAAADD", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
        (
            "viewer",
            member(MemberRole::Viewer),
            ["ADADDDAADDD", "ADADDDAADDD", "HHHHHHHHHHH", "ADADDDAADDD", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
        (
            "end user",
            Principal::EndUser { tenant_id: A, project_id: P1, user_id: Uuid::from_u128(0x55) },
            ["DDDDDDDDDDD", "DDDDDDDDDDD", "HHHHHHHHHHH", "DDDDDDDDDDD", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
        (
            "m2m client",
            Principal::M2mClient { tenant_id: A, project_id: P1, client_id: "cl_1".into() },
            ["DDDDDDDDDDD", "DDDDDDDDDDD", "HHHHHHHHHHH", "DDDDDDDDDDD", "HHHHHHHHHHH", "DDDDDDDDDDD"],
        ),
    ]
}

#[test]
fn every_permission_for_every_principal_on_every_target() {
    let mut checked = 0;
    for (who, principal, rows) in table() {
        for ((what, target), row) in targets().iter().zip(rows) {
            assert_eq!(row.len(), Permission::ALL.len());
            for (p, want) in Permission::ALL.iter().zip(row.chars()) {
                let got = match authorize(&principal, *p, target) {
                    Ok(_) => 'A',
                    Err(CoreError::Forbidden(_)) => 'D',
                    Err(CoreError::NotFound(_)) => 'H',
                    Err(e) => panic!("{who} {p:?} on {what}: unexpected {e}"),
                };
                assert_eq!(got, want, "{who} {p:?} on {what}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 9 * 6 * 11);
    // Tools are recorded as operators, named after the tool; the system as itself.
    assert_eq!(Principal::Tool { name: "authio dev" }.actor().kind, ActorKind::Operator);
    assert_eq!(Principal::System { name: "console" }.actor().kind, ActorKind::System);
}

#[test]
fn authorized_carries_the_target_scope_and_the_principal_as_actor() {
    let key =
        Principal::ApiKey { tenant_id: A, project_id: P1, tenant_kind: TenantKind::Customer, key_id: "k1".into() };
    let own = targets()[0].1;
    let a = authorize(&key, Permission::UsersManage, &own).unwrap();
    assert_eq!(*a.scope().unwrap(), Scope::project(A, P1, TenantKind::Customer));
    assert_eq!(a.actor().kind, ActorKind::ApiKey);
    assert_eq!(a.actor().id.as_deref(), Some("k1"));
    // It stands for the permission it was given, not another.
    assert!(matches!(a.require(Permission::UsersRead), Err(CoreError::Forbidden(_))));

    let viewer = member(MemberRole::Viewer);
    let tenant = authorize(&viewer, Permission::TenantRead, &targets()[3].1).unwrap();
    assert_eq!(*tenant.scope().unwrap(), Scope::tenant(A, TenantKind::Customer));
    assert_eq!(tenant.actor().name.as_deref(), Some("m@acme.test (dashboard)"));
    // A second permission on the same target is decided afresh.
    assert!(matches!(tenant.also(&viewer, Permission::TenantManage), Err(CoreError::Forbidden(_))));
    assert!(tenant.also(&member(MemberRole::Admin), Permission::TenantManage).is_ok());

    let op = authorize(
        &Principal::Operator { user_id: "op".into(), name: None },
        Permission::PlatformOperate,
        &Target::Platform,
    )
    .unwrap();
    assert!(op.scope().is_err(), "the platform target has no tenant scope");
}
