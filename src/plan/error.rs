//! Why a plan was refused: every problem found in it, each with the line, column and
//! field it is about.
//!
//! The plain form (`Display`) is one `FILE:LINE:COL: FIELD: MESSAGE` line per problem,
//! stable enough for tests, editors and `--format json`. The graphical form goes through
//! [`miette::Diagnostic`], with the plan's text and one labelled span per problem.

use std::fmt;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};

/// A plan that cannot be run, with every problem found in it (never just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPlan {
    /// The file name as the user gave it, used as the prefix of each line.
    pub file: String,
    /// In source order.
    pub issues: Vec<PlanIssue>,
    /// The plan text, kept so the graphical form can show the lines each problem is on.
    source: NamedSource<String>,
}

/// One problem in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanIssue {
    /// 1-based line of the offending value (or of its parent, for a missing key).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted path of the field, like `target.account`, `volumes[2].iops` or
    /// `options.timeouts.copy`; empty for a YAML syntax error, which belongs to no field.
    pub field: String,
    /// What was expected and what was found: lowercase, no trailing period.
    pub message: String,
    /// Byte range in the plan text, for the graphical form's label.
    span: SourceSpan,
}

impl PlanIssue {
    pub(crate) fn new(
        (line, column): (usize, usize),
        span: SourceSpan,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PlanIssue { line, column, field: field.into(), message: message.into(), span }
    }
}

impl InvalidPlan {
    /// Issues are sorted by position so the report reads top to bottom, whatever order
    /// the checks ran in.
    pub(crate) fn new(file: &str, text: &str, mut issues: Vec<PlanIssue>) -> Self {
        issues.sort_by_key(|i| (i.line, i.column));
        InvalidPlan {
            file: file.to_owned(),
            issues,
            source: NamedSource::new(file, text.to_owned()).with_language("yaml"),
        }
    }

    /// A [`miette::Report`] for the graphical form: a one-line summary as its header and
    /// each problem as a related diagnostic with its span. Rendering `InvalidPlan`
    /// itself also works, but repeats the plain list in its header.
    pub fn into_report(self) -> miette::Report {
        miette::Report::new(Summary(self))
    }
}

impl fmt::Display for PlanIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

impl fmt::Display for InvalidPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: {issue}", self.file, issue.line, issue.column)?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanIssue {}
impl std::error::Error for InvalidPlan {}

impl Diagnostic for PlanIssue {
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        // The message is this diagnostic's header already; the label only marks the spot.
        let label = LabeledSpan::new_primary_with_span(None, self.span);
        Some(Box::new(std::iter::once(label)))
    }
}

impl Diagnostic for InvalidPlan {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("snapferry::plan::invalid"))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.issues.iter().map(|i| i as &dyn Diagnostic)))
    }
}

/// The graphical form's wrapper: same source and problems, a one-line header.
struct Summary(InvalidPlan);

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.issues.len() {
            1 => write!(f, "invalid plan {}: 1 problem", self.0.file),
            n => write!(f, "invalid plan {}: {n} problems", self.0.file),
        }
    }
}

impl std::error::Error for Summary {}

impl Diagnostic for Summary {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("`snapferry schema` prints the JSON Schema of a plan file"))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.0.source_code()
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.0.related()
    }
}
