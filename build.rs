//! Rebuilds when a migration is added: `sqlx::migrate!` embeds both
//! migration directories at compile time, and cargo would otherwise not
//! notice a new file in them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations-mysql");
}
