//! The cluster steps (`firstboot::assemble`), in one test binary that shares
//! [`common`]: the API waits over real TLS ([`api`]), the bootstrap master's API side
//! through a stand-in kubectl ([`kubectl`]), and every step against directory trees
//! ([`roots`]).

mod api;
mod common;
mod kubectl;
mod roots;
