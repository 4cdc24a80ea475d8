"""The simulator: trace loading and (later) a discrete-event loop driving the pure cores."""
