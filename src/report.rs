//! `report!`: the one declaration of a report. Each report the API returns (health,
//! vacuum, open_report, verify_schemas, ...) is a plain struct declared through this
//! macro, which also emits its `FIELDS` (the keys of its Python dict, in declaration
//! order) and, with the `python` feature, its conversion to that dict (`python::ToPy`),
//! key by key in the same order. A field added here reaches the dict, and the
//! `TypedDict` in `results.py` is checked against `FIELDS` by a test.

/// Declares a report struct (attributes and `///` docs pass through unchanged).
macro_rules! report {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field: $ty, )*
        }

        impl $name {
            /// The report's keys as Python sees them, in order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }

        #[cfg(feature = "python")]
        impl $crate::python::reports::ToPy for $name {
            fn to_py<'py>(&self, py: pyo3::Python<'py>) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::PyAny>> {
                use pyo3::types::PyDictMethods;
                let dict = pyo3::types::PyDict::new(py);
                $( dict.set_item(stringify!($field), $crate::python::reports::ToPy::to_py(&self.$field, py)?)?; )*
                Ok(dict.into_any())
            }
        }

        /// A list of the reports.
        #[cfg(feature = "python")]
        impl $crate::python::reports::ToPy for Vec<$name> {
            fn to_py<'py>(&self, py: pyo3::Python<'py>) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::PyAny>> {
                $crate::python::reports::list(py, self)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    report! {
        /// A report for the test.
        #[derive(Default)]
        pub struct Sample {
            /// Documented fields pass through.
            pub zeta: i64,
            pub alpha: Option<String>,
            pub(crate) middle: Vec<(String, u64)>,
        }
    }

    #[test]
    fn fields_are_the_declaration_in_order() {
        assert_eq!(Sample::FIELDS, ["zeta", "alpha", "middle"]);
        let Sample { zeta, alpha, middle } = Sample::default();
        assert_eq!((zeta, alpha, middle.len()), (0, None, 0));
    }
}
