//! The command line as clap reads it: every verb, its arguments and their help.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tcbridge", version, about = "TrueContext ⇄ Azure bridge: an Azure Functions custom handler")]
pub struct Cli {
    /// The local settings file whose `Values` fill in settings the environment lacks.
    #[arg(long, global = true, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the functions: behind the Functions host (default) or on its own (--standalone).
    Serve {
        /// Serve plain HTTP under /api/... and run the timer and the queue in-process.
        #[arg(long)]
        standalone: bool,
        /// Standalone port (default 7071).
        #[arg(long, requires = "standalone")]
        port: Option<u16>,
        /// Standalone listen address (default 127.0.0.1).
        #[arg(long, requires = "standalone")]
        address: Option<IpAddr>,
        /// Run a built-in TrueContext simulator (seeded, with new submissions every few
        /// seconds) and sync it with an API key on the embedded store: no account needed.
        #[arg(long, requires = "standalone")]
        demo: bool,
    },
    /// Print the status report as JSON; exit 1 when something needs attention.
    Status,
    /// Validate the configuration and say in plain words what is missing or wrong; name each
    /// dependency with its endpoint and the kind of credential it will use.
    Check {
        /// Also reach each dependency once and say whether it answers and takes the credential.
        #[arg(long)]
        online: bool,
    },
    /// Obtain a fresh access token through the same path as the sync (cache, lease, refresh) and
    /// print its expiry and scopes, never the token. Exits non-zero with the failure class.
    Token {
        /// The connection (default: `default`, or `app` with OAUTH_GRANT=client_credentials).
        #[arg(long)]
        connection: Option<String>,
        /// Refresh even when the current token is still good.
        #[arg(long)]
        force: bool,
    },
    /// Pull new and changed submissions from TrueContext now, once, and say what happened.
    Sync {
        /// Required: the schedule itself runs under `serve`.
        #[arg(long)]
        once: bool,
        /// The connection (default: every known connection).
        #[arg(long)]
        connection: Option<String>,
        /// The summary as one JSON object per connection.
        #[arg(long)]
        json: bool,
    },
    /// Walk a past range of one connection again, on a cursor of its own, landing what is
    /// missing or changed. Stops for the day at its share of the team's budget
    /// (RESYNC_BUDGET_SHARE_PERCENT); run it again to resume.
    Resync {
        #[arg(long)]
        connection: String,
        /// Start of the range (processed date, UTC): YYYY-MM-DD or RFC 3339. At most 365 days ago.
        #[arg(long)]
        from: String,
        /// End of the range (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this form.
        #[arg(long)]
        form: Option<String>,
        /// Where it stands as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fetch one submission again and land it (one call).
    Refetch {
        id: String,
        /// The connection (needed when the submission is not landed yet, or under several).
        #[arg(long)]
        connection: Option<String>,
    },
    /// The submissions landed in the store.
    Submissions {
        #[command(subcommand)]
        command: SubmissionsCommand,
    },
    /// Messages that failed on every allowed delivery (the incoming queue's poison queue).
    Poison {
        #[command(subcommand)]
        command: PoisonCommand,
    },
    /// Submissions that could not be landed (refused for good, kept as received with the reason).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The connections: list them with their teams, add an API-key one, put one in a team, turn
    /// one off or on, or delete one.
    Connection {
        #[command(subcommand)]
        command: ConnectionCommand,
    },
    /// Print the link an administrator opens to connect (or reconnect) a connection.
    ConsentUrl {
        /// The connection to connect.
        #[arg(long, default_value = "default")]
        connection: String,
    },
}

#[derive(Subcommand)]
pub enum SubmissionsCommand {
    /// List the landed submissions (all connections unless --connection).
    List {
        #[arg(long)]
        connection: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print one submission's normalised record, or with --raw its document exactly as stored.
    Show {
        id: String,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
pub enum ConnectionCommand {
    /// One line per connection (consented and API-key: team, state, account, last refresh, reason).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Add a connection that reads TrueContext with an API key. Connections of one team share its
    /// daily call budget and its 3 simultaneous calls; one key is one team.
    Add {
        id: String,
        /// The TrueContext team the key belongs to (1-64 letters, digits, '-', '_', '.').
        #[arg(long)]
        team: String,
        /// The API key's id (the user half of its Basic credential).
        #[arg(long)]
        key_id: String,
        /// The setting that holds the key's secret: `TRUECONTEXT_KEY_SECRET_<NAME>` (in Azure, a
        /// Key Vault reference). The secret itself never enters the store.
        #[arg(long)]
        secret_setting: String,
    },
    /// Put a consented connection in a TrueContext team (its calls count against the team's
    /// budget), or with --none back in a team of its own.
    Team {
        id: String,
        team: Option<String>,
        #[arg(long, conflicts_with = "team")]
        none: bool,
    },
    /// Stop syncing, refreshing and taking pushes for a connection; status says it is disabled.
    Disable { id: String },
    /// Turn a disabled connection back on.
    Enable { id: String },
    /// Delete a connection: its token set (every version, from the secret store), its record and
    /// its alerts; an API-key connection's record. Landed submissions and the sync cursor stay.
    Delete { id: String },
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// List the quarantined submissions with the reason each could not be landed.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Land quarantined submissions again from their kept bytes (after a fix): one (by
    /// submission id or `{id}.{sha256}` key) or, with --all, every one. Those that land leave
    /// the quarantine; the others stay with the new reason.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum PoisonCommand {
    /// List the poisoned messages with the error their push last recorded.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put poisoned messages back on the incoming queue: one (by message id or submission id)
    /// or, with --all, every one.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

impl Command {
    /// Whether this is `serve` (a server keeps SIGPIPE ignored: a client's closed socket must
    /// not stop it).
    pub fn is_serve(&self) -> bool {
        matches!(self, Command::Serve { .. })
    }
}
