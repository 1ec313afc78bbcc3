//! The plugin author's commands, three from nothing to a served route:
//! - [`new`]: `infergate new NAME --lang rust|python|js` scaffolds a plugin that builds, with a
//!   test;
//! - [`check`]: `infergate check plugin.wasm` compiles and instantiates it in the real sandbox
//!   and reports its manifest, routes, models, size, compile and instantiate times, or what is
//!   wrong;
//! - [`deploy`]: `infergate deploy plugin.wasm --to URL` uploads it through the admin or tenant
//!   API of a running host.

pub mod check;
pub mod deploy;
pub mod new;
