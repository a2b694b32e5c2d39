//! The command line util-linux gives a helper: `mount.efs SPEC DIR [-sfnv] [-N NS] -o OPTS`
//! (`mount` puts `rw` first in OPTS and passes `_netdev` on). `-h`/`--help` and
//! `--version` anywhere win, and need no root.

use crate::options::Options;

pub const USAGE: &str =
    "Usage: mount.efs [--version] [-h|--help] <fsname> <mountpoint> [-o <options>]";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub spec: String,
    pub mountpoint: String,
    pub options: Options,
    /// `-f`: do everything but the mount itself, then clean up.
    pub fake: bool,
    /// `-v`: print the `mount.nfs4` command.
    pub verbose: bool,
    /// `-N NS`: the network namespace util-linux was asked to mount in.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Version,
    Mount(Invocation),
}

/// Parses argv (without argv[0]). An error is a usage error.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Parsed::Help);
    }
    if args.iter().any(|a| a == "--version") {
        return Ok(Parsed::Version);
    }
    let (Some(spec), Some(mountpoint)) = (args.first(), args.get(1)) else {
        return Err(USAGE.into());
    };
    if spec.starts_with('-') || mountpoint.starts_with('-') {
        return Err(USAGE.into());
    }
    let mut inv = Invocation {
        spec: spec.clone(),
        mountpoint: mountpoint.clone(),
        ..Invocation::default()
    };
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-o" => match rest.next() {
                Some(opts) => inv.options.extend(Options::parse(opts)),
                None => return Err(format!("-o needs a list of options\n{USAGE}")),
            },
            "-N" | "--namespace" => match rest.next() {
                Some(ns) => inv.namespace = Some(ns.clone()),
                None => return Err(format!("-N needs a namespace\n{USAGE}")),
            },
            a if a.starts_with("-o") => inv.options.extend(Options::parse(&a[2..])),
            a if a.starts_with('-')
                && a.len() > 1
                && a[1..].chars().all(|c| "sfnv".contains(c)) =>
            {
                inv.fake |= a.contains('f');
                inv.verbose |= a.contains('v');
            }
            other => return Err(format!("unexpected argument \"{other}\"\n{USAGE}")),
        }
    }
    Ok(Parsed::Mount(inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn what_util_linux_passes() {
        let Parsed::Mount(i) =
            p(&["fs-1:/sub/dir", "/mnt/x", "-v", "-o", "rw,tls,_netdev"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.spec, "fs-1:/sub/dir");
        assert!(i.verbose && !i.fake);
        assert!(i.options.has("_netdev"));
        let Parsed::Mount(i) =
            p(&["fs-1", "/mnt/z", "-sfn", "-N", "/run/netns/x", "-o", "tls"]).unwrap()
        else {
            panic!()
        };
        assert!(i.fake);
        assert_eq!(i.namespace.as_deref(), Some("/run/netns/x"));
    }

    #[test]
    fn help_version_and_usage_errors() {
        assert_eq!(p(&["fs-1", "/mnt", "--help"]).unwrap(), Parsed::Help);
        assert_eq!(p(&["--version"]).unwrap(), Parsed::Version);
        assert!(p(&[]).is_err());
        assert!(p(&["fs-1"]).is_err());
        assert!(p(&["fs-1", "/mnt", "-o"]).is_err());
        assert!(p(&["fs-1", "/mnt", "-x"]).unwrap_err().contains("\"-x\""));
    }
}
