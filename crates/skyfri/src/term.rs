//! The terminal: colour only when the stream is a terminal and `NO_COLOR` is unset or empty
//! (https://no-color.org), decided once for stdout and stderr.

use std::io::IsTerminal;

/// Whether `NO_COLOR` asks for no colour at all.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Sets the colour choice of stdout and stderr for everything printed (styles, progress bars).
pub fn init() {
    console::set_colors_enabled(!no_color() && std::io::stdout().is_terminal());
    console::set_colors_enabled_stderr(!no_color() && std::io::stderr().is_terminal());
}

/// Whether stderr is a terminal that can draw progress bars.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A table's header line, bold on a colour terminal.
pub fn header(line: &str) -> console::StyledObject<&str> {
    console::style(line).bold()
}
