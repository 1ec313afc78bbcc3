//! End-to-end tests: the real `infergate` binary, real plugins compiled from `plugins/` by the
//! build script, real models, real HTTP over loopback.

mod harness;

mod auth;
mod cluster;
mod cors;
mod dev;
mod files;
mod fuzz;
mod gateway;
mod generation;
mod http_basics;
mod languages;
mod limits;
mod mcp;
mod models;
mod outbound;
mod pipeline;
mod reload;
mod reuse;
mod sandbox;
mod scheduling;
mod traces;
