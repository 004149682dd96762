"""Speed targets: each module has `main() -> dict`, writes results/<name>.json and prints one line."""
