//! What the stack walk in the kernel needs to know about the code it walks, read from
//! the objects' unwind tables: today, the frames of the frameless allocation wrappers
//! (libstdc++'s `operator new`) it steps over.

mod frameless;

pub use frameless::{WrapperCall, calls as wrapper_calls};
