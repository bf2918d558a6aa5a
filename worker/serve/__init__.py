"""``synthdetect serve``: the invoke API and the web console, on the worker's engine."""
