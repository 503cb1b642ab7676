"""Human and machine outputs of an assessment: self-contained HTML, JSON, JUnit."""
