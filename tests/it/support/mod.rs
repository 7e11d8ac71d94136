//! Shared test support: the moto server launcher the end-to-end tests start, and the
//! fault-injecting proxy some of them put in front of it.

pub mod fault_proxy;
pub mod moto;
