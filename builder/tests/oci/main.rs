//! Container images: bearer-token auth through a proxy ([`auth`]), the build's lock
//! check ([`lock_check`]), and `nodeimage lock` plus the build's pull against a real
//! registry ([`registry`]).

mod auth;
mod lock_check;
mod registry;
mod support;
