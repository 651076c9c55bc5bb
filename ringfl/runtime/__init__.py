"""Mode-independent run machinery: sessions, the gradient pool, run storage, round records."""
