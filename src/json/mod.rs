//! Reading JSON without building a tree: a byte scanner and the SIEM row
//! borrowed from the page it came in.

pub mod cost;
pub mod row;
pub mod scan;
