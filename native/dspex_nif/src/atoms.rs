//! Atoms shared by the NIF modules. Atoms are only ever created from this fixed list, never
//! from caller data.

rustler::atoms! {
    ok,
    error,
    data,
    compute,
    constraint,
    cycle,
    unknown_variable,
    variable_exists,
    dependencies,
    dependents,
    upstream,
    downstream,
}
