//! The README says only what the binary does: every `salesflow ...` line of its code
//! blocks and every inline `salesflow ...` span names a command the binary has, and every
//! `--flag` on it — or written in the same paragraph as the commands that paragraph
//! names — is in that command's `--help`. And every command's help describes each of its
//! options and arguments and shows examples.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow");

/// `salesflow PATH... --help`, which must succeed.
fn help(path: &[String]) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let ran = support::run(std::path::Path::new(BIN), &args, &[]);
    assert!(
        ran.ok,
        "salesflow {}: {}{}",
        args.join(" "),
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

/// The lines of a help's section (`Commands:`, `Options:`, `Arguments:`).
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The subcommands a help lists (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .iter()
        .filter(|l| l.len() - l.trim_start().len() == 2)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The `--flags` a text names.
fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let before = rest[..at].chars().last();
        if !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            out.insert(format!("--{name}"));
        }
        rest = &rest[at + 2 + name.len()..];
    }
    out
}

/// Whether a help lists a flag.
fn lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        help[i + flag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

/// The helps, read once each.
#[derive(Default)]
struct Helps(BTreeMap<Vec<String>, String>);

impl Helps {
    fn of(&mut self, path: &[String]) -> &str {
        self.0.entry(path.to_vec()).or_insert_with(|| help(path))
    }

    /// The command paths a `salesflow ...` text names: the words after `salesflow` that
    /// the help lists as subcommands (`list|replay` names both).
    fn paths(&mut self, text: &str) -> Vec<Vec<String>> {
        let mut words = text.split_whitespace();
        assert_eq!(words.next(), Some("salesflow"), "{text}");
        let mut path: Vec<String> = Vec::new();
        for word in words {
            let known = subcommands(self.of(&path));
            let choices: Vec<&str> = word.split('|').collect();
            if !choices.iter().all(|c| known.iter().any(|k| k == c)) {
                break;
            }
            if choices.len() > 1 {
                return choices
                    .iter()
                    .map(|c| {
                        let mut p = path.clone();
                        p.push((*c).to_owned());
                        p
                    })
                    .collect();
            }
            path.push(word.to_owned());
        }
        vec![path]
    }

    /// Whether any command `commands` name (or the top level, for the global flags)
    /// lists `flag`.
    fn any_lists(&mut self, commands: &[&str], flag: &str) -> bool {
        if lists(self.of(&[]), flag) {
            return true;
        }
        for command in commands {
            for path in self.paths(command) {
                if lists(self.of(&path), flag) {
                    return true;
                }
            }
        }
        false
    }
}

#[test]
fn every_readme_command_and_flag_exists() {
    let readme = std::fs::read_to_string(support::repo().join("README.md")).unwrap();
    let mut helps = Helps::default();
    let mut problems = Vec::new();
    let mut commands_seen = 0;
    let mut in_code = false;
    for paragraph in readme.split("\n\n") {
        let mut prose = String::new();
        for line in paragraph.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                prose.push_str(line);
                prose.push('\n');
                continue;
            }
            let line = line.trim_start().trim_start_matches("$ ");
            if line.starts_with("salesflow ") {
                let command = line.split(" #").next().unwrap();
                commands_seen += 1;
                for flag in flags(command) {
                    if !helps.any_lists(&[command], &flag) {
                        problems.push(format!("`{command}`: no such flag {flag}"));
                    }
                }
            }
        }
        // Inline spans: the commands, and the flags the paragraph names beside them.
        let spans: Vec<&str> = prose.split('`').skip(1).step_by(2).collect();
        let commands: Vec<&str> = spans
            .iter()
            .copied()
            .filter(|s| s.starts_with("salesflow "))
            .collect();
        for command in &commands {
            commands_seen += 1;
            for flag in flags(command) {
                if !helps.any_lists(&[command], &flag) {
                    problems.push(format!("`{command}`: no such flag {flag}"));
                }
            }
        }
        if commands.is_empty() {
            continue;
        }
        for flag in spans
            .iter()
            .filter(|s| s.starts_with("--"))
            .flat_map(|s| flags(s))
        {
            if !helps.any_lists(&commands, &flag) {
                problems.push(format!(
                    "{flag}: named beside {commands:?}, none of which has it"
                ));
            }
        }
    }
    assert!(
        commands_seen >= 15,
        "only {commands_seen} README commands found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every command reachable from the top: each option and argument has a description, and
/// the help shows examples.
#[test]
fn every_command_describes_its_options_and_shows_examples() {
    let mut problems = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let text = help(&path);
        seen += 1;
        let name = format!("salesflow {}", path.join(" "));
        if !text.contains("Examples:") {
            problems.push(format!("{name}: no examples"));
        }
        for title in ["Options:", "Arguments:"] {
            let lines = section(&text, title);
            for (i, line) in lines.iter().enumerate() {
                let indent = line.len() - line.trim_start().len();
                let is_item = indent <= 6 && line.trim_start().starts_with(['-', '<', '[']);
                if !is_item {
                    continue;
                }
                // "  --flag <V>  what it does", or the description on the next line.
                let described = line.trim().split("  ").filter(|p| !p.is_empty()).count() > 1
                    || lines
                        .get(i + 1)
                        .is_some_and(|n| n.len() - n.trim_start().len() > indent + 4);
                if !described {
                    problems.push(format!("{name}: `{}` has no description", line.trim()));
                }
            }
        }
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
    }
    assert!(seen >= 10, "{seen} commands");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
