"""The generated demo model (`serve --demo`, tests, bench): a training loop kept out of the
serving path; the gateway imports it only when asked for the demo."""
