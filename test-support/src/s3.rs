//! The S3-compatible stores the S3 backend is tested against, by kind:
//! SeaweedFS (the main one) and moto's server (the second).

use std::path::Path;

use crate::lazy::Servers;
use crate::moto::MotoServer;
use crate::seaweed::SeaweedServer;

/// Which S3-compatible store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// SeaweedFS (`weed mini`): [`SeaweedServer`].
    SeaweedFs,
    /// moto's server (`moto_server`): [`MotoServer`].
    Moto,
}

impl S3Kind {
    /// Its name in test and column names: `seaweedfs`, `moto`.
    pub fn name(self) -> &'static str {
        match self {
            S3Kind::SeaweedFs => "seaweedfs",
            S3Kind::Moto => "moto",
        }
    }
}

/// A running S3-compatible server of either kind, with the bucket
/// [`BUCKET`](crate::seaweed::BUCKET); any access key is accepted.
#[derive(Debug)]
pub enum S3Server {
    /// SeaweedFS.
    SeaweedFs(SeaweedServer),
    /// moto.
    Moto(MotoServer),
}

impl S3Server {
    /// Start one of `kind` with its data in `dir`; panics if it does not
    /// start.
    pub fn start(kind: S3Kind, dir: &Path) -> Self {
        match kind {
            S3Kind::SeaweedFs => S3Server::SeaweedFs(SeaweedServer::start(dir)),
            S3Kind::Moto => S3Server::Moto(MotoServer::start(dir)),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> S3Kind {
        match self {
            S3Server::SeaweedFs(_) => S3Kind::SeaweedFs,
            S3Server::Moto(_) => S3Kind::Moto,
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        match self {
            S3Server::SeaweedFs(server) => server.endpoint(),
            S3Server::Moto(server) => server.endpoint(),
        }
    }

    /// A bucket for one store named `name`: [`BUCKET`](crate::seaweed::BUCKET)
    /// on SeaweedFS, a new bucket `name` on moto, whose listings walk every
    /// key of the bucket (a shared bucket would make each listing slower
    /// than the last as the tests fill it). `name` must be a valid bucket
    /// name (lowercase, digits, `-`; 3 to 63 characters).
    pub fn bucket_for(&self, name: &str) -> Result<String, String> {
        match self {
            S3Server::SeaweedFs(_) => Ok(crate::seaweed::BUCKET.to_owned()),
            S3Server::Moto(server) => server.create_bucket(name).map(|()| name.to_owned()),
        }
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        match self {
            S3Server::SeaweedFs(server) => server.kill(),
            S3Server::Moto(server) => server.kill(),
        }
    }

    /// `127.0.0.1:PORT`, for a proxy in front of it.
    pub fn address(&self) -> String {
        let port = match self {
            S3Server::SeaweedFs(server) => server.port,
            S3Server::Moto(server) => server.port,
        };
        format!("127.0.0.1:{port}")
    }
}

/// A reopen leaves the server up: an S3 store's durability is the bucket's,
/// and the store reads it afresh through a new client.
impl Servers for S3Server {}

/// A server in its own temporary directory, for one test.
#[derive(Debug)]
pub struct TestServer {
    /// The server.
    pub server: S3Server,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Start a SeaweedFS server.
    pub fn start() -> Self {
        Self::start_kind(S3Kind::SeaweedFs)
    }

    /// Start a server of `kind`.
    pub fn start_kind(kind: S3Kind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            server: S3Server::start(kind, dir.path()),
            _dir: dir,
        }
    }

    /// The S3 endpoint.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// `host:port`, for a proxy in front of it.
    pub fn address(&self) -> String {
        self.server.address()
    }
}
