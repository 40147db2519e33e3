//! `mount -t fuse.hoardfs` and `/etc/fstab`: mount(8) runs `mount.fuse3`, which runs
//! `hoardfs SOURCE MOUNTPOINT -o OPTIONS`. That form is rewritten here into the ordinary
//! `hoardfs mount SOURCE MOUNTPOINT --option value …`, so both share one parser, one `--help`
//! and one set of errors.
//!
//! ```text
//! s3://bucket/prefix  /mnt/data  fuse.hoardfs  cache-dir=/nvme/hoardfs,max-cache-size=500GiB,metadata-ttl=indefinite,_netdev,nofail  0 0
//! ```
//!
//! `name=value` becomes `--name value` and a bare `name` becomes `--name` (underscores may stand
//! for dashes: `allow_other` is `--allow-other`). Generic mount options that mean nothing to a
//! read-only S3 mount (`ro`, `nodev`, `noatime`, `_netdev`, `nofail`, `x-systemd.*` …) are
//! accepted and ignored; `_netdev` and `nofail` are mount(8)'s and systemd's to act on. Anything
//! else goes to the flag parser, which names what it does not know.

use std::ffi::OsString;

/// Options mount(8), mount.fuse3 or systemd may pass that hoardfs has nothing to do with: the
/// mount is read-only, nodev and nosuid by construction.
const IGNORED: &[&str] = &[
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "_netdev",
    "nofail",
    "default_permissions",
];

/// The command line as the parser should see it: unchanged unless it is the mount-helper form
/// (`hoardfs s3://… MOUNTPOINT [-o OPTS]…`).
pub fn rewrite(args: Vec<OsString>) -> Vec<OsString> {
    let helper_form = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| a.starts_with("s3://"));
    if !helper_form {
        return args;
    }
    let mut out: Vec<OsString> = vec![args[0].clone(), "mount".into()];
    let mut rest = args.into_iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("-o") => {
                if let Some(opts) = rest.next() {
                    out.extend(options(&opts.to_string_lossy()));
                }
            }
            Some(s) if s.starts_with("-o") && s.len() > 2 => out.extend(options(&s[2..])),
            _ => out.push(arg),
        }
    }
    out
}

/// One `-o` list as flags.
fn options(list: &str) -> Vec<OsString> {
    let mut out = Vec::new();
    for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") || name == "comment" {
            continue;
        }
        out.push(format!("--{}", name.replace('_', "-")).into());
        out.extend(value.map(OsString::from));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Vec<String> {
        rewrite(args.iter().map(OsString::from).collect()).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn the_mount_helper_form_becomes_a_mount_command() {
        assert_eq!(
            run(&[
                "hoardfs",
                "s3://b/p",
                "/mnt/x",
                "-o",
                "cache-dir=/nvme/c,max_cache_size=5GiB,metadata-ttl=indefinite,ro,allow_other,noatime,dev,suid,x-systemd.automount",
                "-oforce-path-style"
            ]),
            [
                "hoardfs",
                "mount",
                "s3://b/p",
                "/mnt/x",
                "--cache-dir",
                "/nvme/c",
                "--max-cache-size",
                "5GiB",
                "--metadata-ttl",
                "indefinite",
                "--allow-other",
                "--force-path-style"
            ]
        );
    }

    #[test]
    fn ordinary_command_lines_are_left_alone() {
        for args in [&["hoardfs", "mount", "s3://b", "/m", "--cache-dir", "/c"][..], &["hoardfs", "--version"], &["hoardfs"]] {
            assert_eq!(run(args), args);
        }
    }
}
