//! The tower middleware of the inference stack, one concern per module.

pub mod account;
pub mod batch;
pub mod cache;
pub mod canary;
pub mod classify;
pub mod decode;
pub mod execute;
pub mod experiment;
pub mod observe;
pub mod resolve;
pub mod route;
pub mod shadow;
pub mod tokenize;
pub mod validate;
