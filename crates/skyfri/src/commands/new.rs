//! `skyfri new NAME --lang L`: writes a starter handler folder from the embedded template and
//! adds the function to stack.yml (creating the file, or adding to its `functions:` as text,
//! so the user's comments and layout stay).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use skyfri_core::Template;
use skyfri_runtime::templates;

use crate::stackfile;

#[derive(clap::Args)]
#[command(after_help = "Templates and their aliases: `skyfri template ls`.")]
pub struct New {
    /// Function name: lower-case letters, digits and '-' (a DNS-1123 label).
    name: String,
    /// Template or alias: python3, python3-http, node (node18, node20...), exec, http.
    #[arg(long)]
    lang: String,
    /// Image prefix (a registry or owner): the image is PREFIX/NAME:latest.
    #[arg(long)]
    prefix: Option<String>,
    /// The stack file to create or add to; the handler folder goes beside it.
    #[arg(short = 'f', long = "yaml", default_value = "stack.yml")]
    file: PathBuf,
}

impl New {
    pub async fn run(self) -> Result<()> {
        skyfri_core::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let template = Template::from_lang(&self.lang).with_context(|| {
            format!(
                "--lang {:?} is not a template: see `skyfri template ls` ({})",
                self.lang,
                Template::ALL.map(Template::name).join(", ")
            )
        })?;
        let image = image(self.prefix.as_deref(), &self.name)?;
        let starter = templates::starter(template);
        let dir = self
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let folder = dir.join(&self.name);
        if folder.exists() {
            bail!(
                "{} already exists: pick another name or remove it",
                folder.display()
            );
        }
        let entry = Entry {
            name: &self.name,
            lang: &self.lang,
            image: &image,
            fprocess: starter.fprocess,
        };
        // Whether the file as it is parses: one without functions yet does not.
        let mut parsed_before = false;
        let stack = match std::fs::read_to_string(&self.file) {
            Ok(text) => {
                let before = stackfile::parse(&self.file, &text).ok();
                parsed_before = before.is_some();
                let functions = before.iter().flat_map(|m| &m.functions);
                if functions.into_iter().any(|f| f.spec.name == self.name) {
                    bail!(
                        "{}: function {:?} already exists",
                        self.file.display(),
                        self.name
                    );
                }
                add_function(&text, &entry).with_context(|| self.file.display().to_string())?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_stack(&entry),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.file.display()))
            }
        };
        // The text is checked with the parser `deploy` uses before anything is written.
        let added = match stackfile::parse(&self.file, &stack) {
            Ok(after) => after
                .functions
                .iter()
                .any(|f| f.spec.name == self.name && f.template == Some(template)),
            Err(e) if !parsed_before => return Err(e.context("fix the stack file first")),
            Err(_) => false,
        };
        if !added {
            bail!(
                "{}: could not add {:?} to it (is it a Knative manifest? `skyfri new` adds to stack.yml files)",
                self.file.display(),
                self.name
            );
        }

        std::fs::create_dir(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        let written = write_starter(&folder, &starter, &self.name)
            .and_then(|()| write_atomically(&self.file, &stack));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&folder);
            return Err(e);
        }
        let files: Vec<&str> = starter.files.iter().map(|(f, _)| *f).collect();
        println!(
            "created {}/ ({}) and added {} to {}",
            folder.display(),
            files.join(", "),
            self.name,
            self.file.display()
        );
        println!(
            "next: skyfri deploy -f {} (or skyfri up -f {}), then: echo hi | skyfri invoke {}",
            self.file.display(),
            self.file.display(),
            self.name
        );
        Ok(())
    }
}

/// The image of a new function: `PREFIX/NAME:latest`, or `NAME:latest`.
fn image(prefix: Option<&str>, name: &str) -> Result<String> {
    let Some(prefix) = prefix.map(|p| p.trim_end_matches('/')) else {
        return Ok(format!("{name}:latest"));
    };
    let ok = !prefix.is_empty()
        && !prefix.starts_with(['/', '-', '.', ':'])
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if !ok {
        bail!(
            "--prefix {prefix:?}: use a registry or owner such as registry.example.com/team \
             (letters, digits, '.', '_', '-', '/' and a ':port')"
        );
    }
    Ok(format!("{prefix}/{name}:latest"))
}

/// One function's stack.yml fields.
struct Entry<'a> {
    name: &'a str,
    lang: &'a str,
    image: &'a str,
    fprocess: Option<&'a str>,
}

impl Entry<'_> {
    /// The entry as YAML lines under `functions:`, indented by `unit` per level.
    fn render(&self, unit: &str) -> String {
        let mut out = format!(
            "{unit}{name}:\n{unit}{unit}lang: {lang}\n{unit}{unit}handler: ./{name}\n{unit}{unit}image: {image}\n",
            name = self.name,
            lang = self.lang,
            image = self.image,
        );
        if let Some(p) = self.fprocess {
            out.push_str(&format!("{unit}{unit}fprocess: {p}\n"));
        }
        out
    }
}

fn new_stack(entry: &Entry) -> String {
    format!(
        "version: 1.0\nprovider:\n  name: openfaas\n  gateway: {}\nfunctions:\n{}",
        crate::client::DEFAULT_GATEWAY,
        entry.render("  ")
    )
}

/// Adds `entry` at the end of the top-level `functions:` block of `text` (or a new one at
/// the end of the file), keeping every other line as it is.
fn add_function(text: &str, entry: &Entry) -> Result<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let top_level = |l: &str| !l.starts_with([' ', '\t', '#']) && !l.trim().is_empty();
    let is_content = |l: &&str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    // The indentation the user writes with, from the first indented line of `lines`.
    let unit_of = |lines: &[&str]| -> String {
        lines
            .iter()
            .filter(|l| is_content(l))
            .map(|l| &l[..l.len() - l.trim_start().len()])
            .find(|u| !u.is_empty())
            .filter(|u| u.bytes().all(|b| b == b' '))
            .unwrap_or("  ")
            .to_string()
    };
    let Some(start) = lines.iter().position(|l| l.starts_with("functions:")) else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("functions:\n");
        out.push_str(&entry.render(&unit_of(&lines)));
        return Ok(out);
    };
    let value = lines[start]["functions:".len()..]
        .split(" #")
        .next()
        .unwrap_or("")
        .trim();
    let mut out: String = lines[..start].concat();
    match value {
        "" => {}
        "{}" => {
            // An empty inline map becomes a block holding the new function.
            out.push_str("functions:\n");
            out.push_str(&entry.render(&unit_of(&lines)));
            out.push_str(&lines[start + 1..].concat());
            return Ok(out);
        }
        _ => bail!(
            "functions: is written inline ({value}): write it as a block (one function per indented key) so that `skyfri new` can add to it"
        ),
    }
    let end = lines[start + 1..]
        .iter()
        .position(|l| top_level(l))
        .map_or(lines.len(), |i| start + 1 + i);
    let body = &lines[start + 1..end];
    let unit = unit_of(if body.iter().any(is_content) {
        body
    } else {
        &lines
    });
    // After the block's last indented line: blank lines and comments that follow it stay
    // below the new function.
    let insert = body
        .iter()
        .rposition(is_content)
        .map_or(start + 1, |i| start + 2 + i);
    out.push_str(&lines[start..insert].concat());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&entry.render(&unit));
    out.push_str(&lines[insert..].concat());
    Ok(out)
}

fn write_starter(folder: &Path, starter: &templates::Starter, name: &str) -> Result<()> {
    for (file, contents) in starter.files {
        let path = folder.join(file);
        std::fs::write(&path, contents.replace("{{name}}", name))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if templates::is_executable_starter_file(file) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes beside `path` and renames, so an interrupted `new` never leaves half a stack file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("yml.skyfri-new-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: Entry = Entry {
        name: "hello",
        lang: "python3",
        image: "hello:latest",
        fprocess: None,
    };

    #[test]
    fn adds_to_the_functions_block_keeping_comments() -> Result<()> {
        let text = "# my stack\nversion: 1.0\nfunctions:\n    # the first one\n    a:\n        lang: exec\n        fprocess: cat  # echo\n\n# below\nconfiguration:\n  templates: []\n";
        let out = add_function(text, &ENTRY)?;
        assert_eq!(
            out,
            "# my stack\nversion: 1.0\nfunctions:\n    # the first one\n    a:\n        lang: exec\n        fprocess: cat  # echo\n    hello:\n        lang: python3\n        handler: ./hello\n        image: hello:latest\n\n# below\nconfiguration:\n  templates: []\n"
        );
        Ok(())
    }

    #[test]
    fn adds_a_block_when_there_is_none_or_it_is_empty() -> Result<()> {
        let block = "  hello:\n    lang: python3\n    handler: ./hello\n    image: hello:latest\n";
        assert_eq!(
            add_function("version: 1.0", &ENTRY)?,
            format!("version: 1.0\nfunctions:\n{block}")
        );
        assert_eq!(
            add_function("functions: {}\nversion: 1.0\n", &ENTRY)?,
            format!("functions:\n{block}version: 1.0\n")
        );
        assert_eq!(
            add_function("functions:\n", &ENTRY)?,
            format!("functions:\n{block}")
        );
        assert!(add_function("functions: {a: {lang: exec}}\n", &ENTRY).is_err());
        // The file's own indentation.
        assert!(add_function("provider:\n    name: openfaas\n", &ENTRY)?
            .ends_with("functions:\n    hello:\n        lang: python3\n        handler: ./hello\n        image: hello:latest\n"));
        Ok(())
    }

    #[test]
    fn images() {
        assert_eq!(image(None, "f").ok().as_deref(), Some("f:latest"));
        assert_eq!(
            image(Some("localhost:5000/team/"), "f").ok().as_deref(),
            Some("localhost:5000/team/f:latest")
        );
        for bad in ["", "/abs", "a b", "x\ny", "a;rm"] {
            assert!(image(Some(bad), "f").is_err(), "{bad:?}");
        }
    }
}
