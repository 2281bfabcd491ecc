"""Hardware-in-the-loop: simulated meters on virtual serial lines, a software TPM, real
servers; the same scenarios run against real hardware when pointed at it."""
