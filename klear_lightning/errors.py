"""The error type for bad user input (a config value, an argument, an input file)."""


class ConfigError(ValueError):
    """A value the user gave is wrong. The message starts with the field at fault, then says what is
    wrong: `model.task_weights.t2x: unknown task 't2x'; ...`. `klear` prints it as one `error:` line
    and exits with status 2."""
