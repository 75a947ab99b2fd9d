//! Registration of the hottest NIFs without the per-call allocation of `#[rustler::nif]`.
//!
//! The attribute's wrapper collects the arguments into a `Vec<Term>` on every call: a
//! `malloc`/`free` pair that was 7 % of a metric record. [`hot_nif!`] registers the same
//! kind of entry (`rustler::Nif`, gathered by `rustler::init!`) but hands the function a
//! fixed-size array of arguments, returns a term result as it is, and hands errors and
//! panics to rustler's own runtime, so they become exceptions exactly as for an attributed NIF.
//!
//! This is the one module that uses rustler's internals (`codegen_runtime`, `Nif`). Built
//! with the `plain_nifs` feature, [`hot_nif!`] registers the same bodies through plain
//! `#[rustler::nif]` wrappers instead: the fallback for a rustler whose internals moved,
//! and the baseline the gain is measured against (BENCHMARKS.md).

#[cfg(not(feature = "plain_nifs"))]
use rustler::codegen_runtime::{handle_nif_result, NifReturned};
#[cfg(not(feature = "plain_nifs"))]
use rustler::sys::{ErlNifEnv, ErlNifTerm};
use rustler::{Env, NifResult, Term};

/// A hot NIF body: the environment and the `N` arguments.
#[cfg_attr(feature = "plain_nifs", allow(dead_code))]
pub type Body<const N: usize> = for<'a> fn(Env<'a>, [Term<'a>; N]) -> NifResult<Term<'a>>;

/// Calls `body` with the arguments of a NIF call and encodes its result.
///
/// # Safety
/// `env` and `argv` are those the VM passed to the NIF, and `argv` holds `N` terms (the VM
/// guarantees the arity the NIF was registered with).
#[cfg(not(feature = "plain_nifs"))]
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
#[cfg(not(feature = "plain_nifs"))]
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

/// The `plain_nifs` fallback: the same registration through `#[rustler::nif]`. The wrapper
/// lives in a module named after the body (modules and functions have separate
/// namespaces), one arm per arity in use.
#[cfg(feature = "plain_nifs")]
macro_rules! hot_nif {
    ($name:literal, $arity:tt, $body:ident) => {
        mod $body {
            use rustler::{Env, NifResult, Term};
            $crate::hot_nif::plain_wrapper!($name, $arity, $body);
        }
    };
}

#[cfg(feature = "plain_nifs")]
macro_rules! plain_wrapper {
    ($name:literal, 3, $body:ident) => {
        #[rustler::nif(name = $name)]
        fn nif<'a>(env: Env<'a>, a: Term<'a>, b: Term<'a>, c: Term<'a>) -> NifResult<Term<'a>> {
            super::$body(env, [a, b, c])
        }
    };
    ($name:literal, 4, $body:ident) => {
        #[rustler::nif(name = $name)]
        fn nif<'a>(
            env: Env<'a>,
            a: Term<'a>,
            b: Term<'a>,
            c: Term<'a>,
            d: Term<'a>,
        ) -> NifResult<Term<'a>> {
            super::$body(env, [a, b, c, d])
        }
    };
    ($name:literal, 5, $body:ident) => {
        #[rustler::nif(name = $name)]
        fn nif<'a>(
            env: Env<'a>,
            a: Term<'a>,
            b: Term<'a>,
            c: Term<'a>,
            d: Term<'a>,
            e: Term<'a>,
        ) -> NifResult<Term<'a>> {
            super::$body(env, [a, b, c, d, e])
        }
    };
    ($name:literal, 9, $body:ident) => {
        #[rustler::nif(name = $name)]
        #[allow(clippy::too_many_arguments)]
        fn nif<'a>(
            env: Env<'a>,
            a: Term<'a>,
            b: Term<'a>,
            c: Term<'a>,
            d: Term<'a>,
            e: Term<'a>,
            f: Term<'a>,
            g: Term<'a>,
            h: Term<'a>,
            i: Term<'a>,
        ) -> NifResult<Term<'a>> {
            super::$body(env, [a, b, c, d, e, f, g, h, i])
        }
    };
}

pub(crate) use hot_nif;
#[cfg(feature = "plain_nifs")]
pub(crate) use plain_wrapper;
