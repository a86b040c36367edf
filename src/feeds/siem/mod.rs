pub mod run;
pub mod state;
