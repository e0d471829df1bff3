"""Pure domain code: the job message, error classification, retry policy, recovery strategies,
outcome values, redaction, URL checks and encryption of stored originals. No I/O beyond what a
caller passes in."""
