//! The S3-compatible object store of `cargo xtask services up`: S3Proxy
//! (`org.gaul:s3proxy`) from Maven Central with its filesystem backend,
//! on `127.0.0.1:9390`, holding the bucket [`S3_BUCKET`] for tests.
//!
//! Why S3Proxy: it speaks the S3 REST API the way the gateway uses it —
//! SigV4 signatures checked against one access key (a wrong secret is
//! refused with 403, which the tests rely on), multipart uploads with
//! the 5 MiB minimum part size, ranged `GET`, `ListObjectsV2` — and it
//! installs from a registry this project reaches (Maven Central, like
//! Cassandra), running on the Java 17 that Cassandra needs anyway.
//! Resolved once with `mvn dependency:copy-dependencies` from a generated
//! pom; the pom pins `jackson-annotations` to the version S3Proxy's
//! Jackson 3 needs (Maven's nearest-wins mediation picks an older one and
//! S3Proxy fails at start-up without the pin).
//!
//! Data, logs and the pid file live under `<cache>/run/s3`; the data
//! starts empty at each start, like Redis's (tests use key prefixes of
//! their own and leave their blobs behind).

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::services::{connect, java, java_home, which};

/// S3Proxy release taken from Maven Central.
const S3PROXY_VERSION: &str = "4.1.0";
/// The Jackson annotations S3Proxy's Jackson 3 databind needs.
const JACKSON_ANNOTATIONS_VERSION: &str = "2.22";
/// Address of the development S3 server.
pub(crate) const S3_ADDR: &str = "127.0.0.1:9390";
/// The bucket created for development and tests.
pub(crate) const S3_BUCKET: &str = "qim-test";
/// The development access key id (loopback only, not a secret).
pub(crate) const S3_ACCESS_KEY: &str = "qim-dev";
/// The development secret key (loopback only, not a secret).
pub(crate) const S3_SECRET_KEY: &str = "qim-dev-secret";
/// How long `up` waits for S3Proxy to answer.
pub(crate) const S3_START_TIMEOUT: Duration = Duration::from_secs(60);

/// `QIM_TEST_S3` for the tests: endpoint, credentials and bucket in one
/// URL (`qim_storage::conformance_blobs::s3_test_options` reads it).
pub(crate) fn test_url() -> String {
    format!("http://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@{S3_ADDR}/{S3_BUCKET}")
}

/// The pid file of the server `start` ran.
pub(crate) fn pid_file(cache: &Path) -> PathBuf {
    cache.join("run/s3/s3proxy.pid")
}

/// The log of the server.
pub(crate) fn log_file(cache: &Path) -> PathBuf {
    cache.join("run/s3/stdout.log")
}

/// True when an HTTP server answers at `addr` (S3Proxy refuses an
/// unsigned `GET /` with 403: that is an answer).
pub(crate) fn ready(addr: &str) -> bool {
    let Ok(mut s) = connect(addr) else {
        return false;
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 "
}

/// Resolves S3Proxy and its runtime dependencies into the cache (once);
/// returns the directory holding the jars.
pub(crate) fn install(cache: &Path) -> Result<PathBuf> {
    let home = cache.join(format!("s3proxy-{S3PROXY_VERSION}"));
    let lib = home.join("lib");
    let done = home.join(".complete");
    if done.exists() {
        return Ok(lib);
    }
    let java = java()?;
    let mvn = which("mvn").context(
        "mvn not found: install Maven (apt-get install -y maven) to fetch S3Proxy from Maven Central",
    )?;
    eprintln!("fetching S3Proxy {S3PROXY_VERSION} from Maven Central (once)");
    let t0 = Instant::now();
    fs::create_dir_all(&home)?;
    let pom = home.join("pom.xml");
    fs::write(
        &pom,
        format!(
            r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>qim.dev</groupId>
  <artifactId>s3proxy-runtime</artifactId>
  <version>1</version>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>com.fasterxml.jackson.core</groupId>
        <artifactId>jackson-annotations</artifactId>
        <version>{JACKSON_ANNOTATIONS_VERSION}</version>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.gaul</groupId>
      <artifactId>s3proxy</artifactId>
      <version>{S3PROXY_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"#
        ),
    )?;
    let _ = fs::remove_dir_all(&lib);
    let status = Command::new(mvn)
        .current_dir(&home)
        .args(["-q", "-B", "-Dstyle.color=never", "-f"])
        .arg(&pom)
        .arg(format!("-Dmaven.repo.local={}", cache.join("m2").display()))
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", lib.display()))
        .env("JAVA_HOME", java_home(&java))
        .status()
        .context("running mvn")?;
    if !status.success() {
        bail!("mvn dependency:copy-dependencies for s3proxy {S3PROXY_VERSION} failed");
    }
    if !lib.join(format!("s3proxy-{S3PROXY_VERSION}.jar")).exists() {
        bail!("s3proxy jar missing in {} after mvn", lib.display());
    }
    fs::write(&done, S3PROXY_VERSION)?;
    eprintln!(
        "fetched S3Proxy in {:.1} s into {}",
        t0.elapsed().as_secs_f64(),
        lib.display()
    );
    Ok(lib)
}

/// Starts S3Proxy on [`S3_ADDR`] with the bucket [`S3_BUCKET`]; does not
/// wait (see [`ready`]).
pub(crate) fn start(cache: &Path, lib: &Path) -> Result<()> {
    let java = java()?;
    let run = cache.join("run/s3");
    let data = run.join("data");
    // A bucket of the filesystem backend is a directory under its base.
    let _ = fs::remove_dir_all(&data);
    fs::create_dir_all(data.join(S3_BUCKET))?;
    let properties = run.join("s3proxy.conf");
    fs::write(
        &properties,
        format!(
            "# Written by `cargo xtask services up`: a development S3 server.\n\
             s3proxy.endpoint=http://{S3_ADDR}\n\
             s3proxy.authorization=aws-v2-or-v4\n\
             s3proxy.identity={S3_ACCESS_KEY}\n\
             s3proxy.credential={S3_SECRET_KEY}\n\
             jclouds.provider=filesystem\n\
             jclouds.filesystem.basedir={}\n",
            data.display()
        ),
    )?;
    let logback = run.join("logback.xml");
    fs::write(&logback, LOGBACK_XML)?;
    let stdout = fs::File::create(log_file(cache))?;
    let stderr = stdout.try_clone()?;
    let child = Command::new(&java)
        .args(["-Xms64m", "-Xmx512m"])
        .arg(format!("-Dlogback.configurationFile={}", logback.display()))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("org.gaul.s3proxy.Main")
        .arg("--properties")
        .arg(&properties)
        .current_dir(&run)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Own process group: Ctrl-C on the terminal that ran `up` does not
        // reach the server.
        .process_group(0)
        .spawn()
        .context("starting java for s3proxy")?;
    fs::write(pid_file(cache), child.id().to_string())?;
    Ok(())
}

/// Warnings and S3Proxy's own start-up lines only: request logging of the
/// default configuration would fill the log during the tests.
const LOGBACK_XML: &str = r#"<configuration scan="false">
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{ISO8601} %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="OUT"/></root>
  <logger name="org.gaul.s3proxy.Main" level="INFO"/>
</configuration>
"#;
