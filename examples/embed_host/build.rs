fn main() {
    // Run without LD_LIBRARY_PATH: the binary finds the libpython it was linked with.
    pyo3_build_config::add_libpython_rpath_link_args();
}
