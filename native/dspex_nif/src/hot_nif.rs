//! Registration of the hottest NIFs without the per-call allocation of `#[rustler::nif]`.
//!
//! The attribute's wrapper collects the arguments into a `Vec<Term>` on every call: a
//! `malloc`/`free` pair that was 7 % of a metric record. [`hot_nif!`] registers the same
//! kind of entry (`rustler::Nif`, gathered by `rustler::init!`) but hands the function a
//! fixed-size array of arguments, returns a term result as it is, and hands errors and
//! panics to rustler's own runtime, so they become exceptions exactly as for an attributed NIF.

use rustler::codegen_runtime::{handle_nif_result, NifReturned};
use rustler::sys::{ErlNifEnv, ErlNifTerm};
use rustler::{Env, NifResult, Term};

/// A hot NIF body: the environment and the `N` arguments.
pub type Body<const N: usize> = for<'a> fn(Env<'a>, [Term<'a>; N]) -> NifResult<Term<'a>>;

/// Calls `body` with the arguments of a NIF call and encodes its result.
///
/// # Safety
/// `env` and `argv` are those the VM passed to the NIF, and `argv` holds `N` terms (the VM
/// guarantees the arity the NIF was registered with).
#[inline(always)]
pub unsafe fn call<const N: usize>(
    env: *mut ErlNifEnv,
    argv: *const ErlNifTerm,
    body: Body<N>,
) -> ErlNifTerm {
    let lifetime = ();
    let env = Env::new(&lifetime, env);
    let args: [Term; N] = std::array::from_fn(|i| Term::new(env, *argv.add(i)));
    match std::panic::catch_unwind(move || body(env, args)) {
        Ok(Ok(term)) => term.as_c_arg(),
        other => {
            let returned: NifReturned = handle_nif_result(other, env);
            returned.apply(env)
        }
    }
}

/// `hot_nif!("name", ARITY, body)` registers `body` (a [`Body`]) as the regular-scheduler NIF
/// `name/ARITY` of the module given to `rustler::init!`.
macro_rules! hot_nif {
    ($name:literal, $arity:literal, $body:path) => {
        rustler::codegen_runtime::inventory::submit!(rustler::Nif {
            name: concat!($name, "\0").as_ptr() as *const rustler::codegen_runtime::c_char,
            arity: $arity,
            flags: rustler::SchedulerFlags::Normal as rustler::codegen_runtime::c_uint,
            raw_func: {
                unsafe extern "C" fn raw(
                    env: *mut rustler::sys::ErlNifEnv,
                    _argc: rustler::codegen_runtime::c_int,
                    argv: *const rustler::sys::ErlNifTerm,
                ) -> rustler::sys::ErlNifTerm {
                    // SAFETY: the VM calls a NIF with its environment and `$arity` arguments.
                    unsafe { $crate::hot_nif::call::<$arity>(env, argv, $body) }
                }
                raw
            },
        });
    };
}

pub(crate) use hot_nif;
