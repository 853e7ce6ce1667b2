//! Typed errors of the router: every invalid input names the offending field and says how to fix it.

/// Which input matrix a value or shape problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// The token activations `x` (T×d).
    X,
    /// The adapter keys (M×d, possibly a strided view into bundled rows).
    Keys,
    /// The expert gates `G` (N×d).
    Gates,
    /// Precomputed gate scores (T×N).
    GateScores,
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Operand::X => "x (T×d token activations)",
            Operand::Keys => "keys (M×d)",
            Operand::Gates => "gates (N×d)",
            Operand::GateScores => "gate scores (T×N)",
        };
        f.write_str(name)
    }
}

/// Errors raised while building a layout, validating inputs or routing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// `top_k` was zero.
    #[error("route config: top_k = 0 selects nothing; set top_k to at least 1 (MEFT default 64)")]
    ZeroTopK,
    /// `top_p` was zero.
    #[error("route config: top_p = 0 probes no expert; set top_p to at least 1 (MEFT default 8)")]
    ZeroTopP,
    /// More experts probed than exist.
    #[error("route config: top_p = {top_p} exceeds the {experts} experts of the layout; use top_p <= {experts}")]
    TooManyProbes {
        /// Requested experts per token.
        top_p: usize,
        /// Experts in the layout.
        experts: usize,
    },
    /// A device capacity of zero rows.
    #[error("route config: capacity 0 rows can hold no neuron; use Capacity::Unlimited or at least 1 row")]
    ZeroCapacity,
    /// A layout with no neurons or no experts.
    #[error("expert layout: M = {neurons} neurons and N = {experts} experts must both be at least 1")]
    EmptyLayout {
        /// Neurons M.
        neurons: usize,
        /// Experts N.
        experts: usize,
    },
    /// The expert factor was not a positive finite number.
    #[error("expert layout: expert factor {factor} must be finite and > 0 (default 0.25 gives N = 4·√M)")]
    BadExpertFactor {
        /// The rejected factor.
        factor: f64,
    },
    /// N does not divide M.
    #[error("expert layout: N = {experts} experts do not divide M = {neurons} neurons; nearest valid M: {below:?} below, {above:?} above")]
    ExpertsDoNotDivide {
        /// Neurons M.
        neurons: usize,
        /// Experts N.
        experts: usize,
        /// Largest valid M below (same N rule), if any.
        below: Option<usize>,
        /// Smallest valid M above (same N rule).
        above: Option<usize>,
    },
    /// A matrix has the wrong number of columns.
    #[error("{what}: expected {expected} columns, got {got}; all of x, keys and gates must share d (gate scores: N)")]
    DimMismatch {
        /// The matrix.
        what: Operand,
        /// Columns required.
        expected: usize,
        /// Columns given.
        got: usize,
    },
    /// A matrix has the wrong number of rows.
    #[error("{what}: expected {expected} rows, got {got}")]
    RowsMismatch {
        /// The matrix.
        what: Operand,
        /// Rows required.
        expected: usize,
        /// Rows given.
        got: usize,
    },
    /// A buffer is too short for the shape claimed.
    #[error("{what}: {rows} rows of {cols} columns with row stride {stride} need {need} elements, the buffer has {got}")]
    BufferTooShort {
        /// The matrix.
        what: Operand,
        /// Rows claimed.
        rows: usize,
        /// Columns claimed.
        cols: usize,
        /// Row stride claimed.
        stride: usize,
        /// Elements needed.
        need: usize,
        /// Elements present.
        got: usize,
    },
    /// A row stride shorter than a row.
    #[error("{what}: row stride {stride} is shorter than the row length {cols}; bundled [k|v] rows use stride 2·d")]
    StrideTooShort {
        /// The matrix.
        what: Operand,
        /// Stride given.
        stride: usize,
        /// Row length.
        cols: usize,
    },
    /// A NaN or infinity in an input.
    #[error("{what}: non-finite value {value} at row {row}, column {col}; check the producer of this tensor")]
    NonFinite {
        /// The matrix.
        what: Operand,
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
        /// The value itself.
        value: f32,
    },
    /// Finite inputs whose score overflowed f32.
    #[error("score of token {token} against {what} row {row} overflowed to {value}; inputs are finite but too large")]
    ScoreOverflow {
        /// Token row of x.
        token: usize,
        /// Key or gate row.
        row: usize,
        /// Keys or gates.
        what: Operand,
        /// The non-finite score.
        value: f32,
    },
}

/// Shorthand for results carrying [`RouteError`].
pub type Result<T> = std::result::Result<T, RouteError>;
