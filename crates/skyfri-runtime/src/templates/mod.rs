//! The templates' shim files, embedded in the binary and written next to each artefact's
//! `function/` folder so an artefact is self-contained and never changes under a replica.

use skyfri_core::Template;

/// The Python server shared by python3, python3-http and exec (a mode argument picks the
/// calling convention), so the HTTP code exists once.
pub const PYTHON_SHIM: &str = "skyfri_shim.py";
/// The Node server of the node template.
pub const NODE_SHIM: &str = "skyfri_shim.js";

pub const PYTHON_SHIM_SRC: &str = include_str!("skyfri_shim.py");
pub const NODE_SHIM_SRC: &str = include_str!("skyfri_shim.js");

/// The custom runtime of the lambda-provided template, in the handler folder.
pub const LAMBDA_BOOTSTRAP: &str = "bootstrap";

/// Starter files written executable.
pub fn is_executable_starter_file(name: &str) -> bool {
    name == LAMBDA_BOOTSTRAP || name.ends_with(".sh")
}

/// The files (name relative to the artefact root, contents) a template adds to an artefact.
pub fn shim_files(template: Template) -> &'static [(&'static str, &'static str)] {
    match template {
        Template::Python3 | Template::Python3Http | Template::Exec => {
            &[(PYTHON_SHIM, PYTHON_SHIM_SRC)]
        }
        Template::Node => &[(NODE_SHIM, NODE_SHIM_SRC)],
        // The user's program is the server, and a Lambda runtime client talks to skyfri's
        // lambda shim: nothing to add.
        Template::Http
        | Template::LambdaPython
        | Template::LambdaNode
        | Template::LambdaProvided => &[],
    }
}

/// The mode argument the Python shim takes for a template, if the template uses it.
pub fn python_mode(template: Template) -> Option<&'static str> {
    match template {
        Template::Python3 => Some("python3"),
        Template::Python3Http => Some("python3-http"),
        Template::Exec => Some("exec"),
        Template::Node
        | Template::Http
        | Template::LambdaPython
        | Template::LambdaNode
        | Template::LambdaProvided => None,
    }
}

/// What `skyfri new` writes for a template: a handler folder that builds and answers calls
/// as it is, and the stack.yml fields it needs.
pub struct Starter {
    /// The language, for `skyfri template ls`.
    pub language: &'static str,
    /// One line saying what the template's handler is.
    pub description: &'static str,
    /// Files of the handler folder (name, contents); `{{name}}` stands for the function's name.
    pub files: &'static [(&'static str, &'static str)],
    /// The `fprocess` the template needs, run in the handler folder.
    pub fprocess: Option<&'static str>,
}

/// The starter handler of a template.
pub fn starter(template: Template) -> Starter {
    match template {
        Template::Python3 => Starter {
            language: "Python 3",
            description: "handle(req): the body as text in, the answer out (OpenFaaS python3)",
            files: &[
                ("handler.py", include_str!("starters/python3/handler.py")),
                (
                    "requirements.txt",
                    include_str!("starters/python3/requirements.txt"),
                ),
            ],
            fprocess: None,
        },
        Template::Python3Http => Starter {
            language: "Python 3",
            description:
                "handle(event, context): method, path, headers, body in; status, headers, body out",
            files: &[
                (
                    "handler.py",
                    include_str!("starters/python3-http/handler.py"),
                ),
                (
                    "requirements.txt",
                    include_str!("starters/python3-http/requirements.txt"),
                ),
            ],
            fprocess: None,
        },
        Template::Node => Starter {
            language: "JavaScript (Node.js)",
            description:
                "async (event, context) => context.status(200).succeed(body) (OpenFaaS node18/20)",
            files: &[
                ("handler.js", include_str!("starters/node/handler.js")),
                ("package.json", include_str!("starters/node/package.json")),
            ],
            fprocess: None,
        },
        Template::Exec => Starter {
            language: "any command",
            description:
                "runs fprocess per call: body on stdin, answer on stdout (classic watchdog)",
            files: &[("handler.sh", include_str!("starters/exec/handler.sh"))],
            fprocess: Some("sh handler.sh"),
        },
        Template::Http => Starter {
            language: "any HTTP server",
            description:
                "fprocess starts a server listening on 127.0.0.1:$PORT that gets every call",
            files: &[("server.py", include_str!("starters/http/server.py"))],
            fprocess: Some("python3 server.py"),
        },
        Template::LambdaPython => Starter {
            language: "Python 3 (AWS Lambda)",
            description:
                "def handler(event, context) in handler.py (_HANDLER handler.handler), run by AWS's awslambdaric",
            files: &[
                (
                    "handler.py",
                    include_str!("starters/lambda-python/handler.py"),
                ),
                (
                    "requirements.txt",
                    include_str!("starters/lambda-python/requirements.txt"),
                ),
            ],
            fprocess: None,
        },
        Template::LambdaNode => Starter {
            language: "JavaScript (AWS Lambda)",
            description:
                "exports.handler = async (event, context) in index.js (_HANDLER index.handler), run by AWS's aws-lambda-ric",
            files: &[
                ("index.js", include_str!("starters/lambda-node/index.js")),
                (
                    "package.json",
                    include_str!("starters/lambda-node/package.json"),
                ),
            ],
            fprocess: None,
        },
        Template::LambdaProvided => Starter {
            language: "any executable (AWS Lambda)",
            description:
                "an executable bootstrap that loops on the Lambda Runtime API (a shell loop, a lambda_runtime binary)",
            files: &[(
                LAMBDA_BOOTSTRAP,
                include_str!("starters/lambda-provided/bootstrap"),
            )],
            fprocess: None,
        },
    }
}
