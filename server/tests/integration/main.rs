//! Integration tests: the real server in-process on 127.0.0.1:0, driven by real HTTP and gRPC
//! clients. One test binary (modules below) keeps link time down.

mod common;
mod drift;
mod errors;
mod faults;
mod gateway;
mod grpc;
mod hostile;
mod http;
mod lifecycle;
mod limits;
mod metrics;
mod registry;
mod routes;
mod security;
