//! The control plane: tenants and projects as records, dashboard members, dedicated hosts and
//! databases, online moves between homes, and the dedicated-database requests.
pub mod console;
pub mod control;
pub mod dedicated;
pub mod moves;
