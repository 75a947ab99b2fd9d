//! Atoms shared by the NIF modules. Atoms are only ever created from this fixed list, never
//! from caller data.

rustler::atoms! {
    ok,
    error,
}
