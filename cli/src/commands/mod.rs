//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod capture;
pub(crate) mod extract;
pub(crate) mod inspect;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod verify;
