"""Chat and serving: one continuous-batching engine behind the `kubetune chat` REPL and the OpenAI-compatible
`kubetune serve` server, prompt rendering with XTuner's templates, and MOSS-style plugins."""
