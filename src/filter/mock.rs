//! A host for unit tests that behaves like Envoy where the filter can tell:
//! - one header map behind both APIs: a header read returns the first line,
//!   the `request.headers.<name>` property every line joined by commas, and
//!   X-Forwarded-For lines are joined as they arrive, as Envoy's header map
//!   joins that inline header;
//! - metrics have ids, and keep their values;
//! - `set_envoy_filter_state` checks the object factory and the value, and
//!   answers a root context (no request) NotFound for a valid value;
//! - any call can be made to fail.
//!
//! Every call is recorded, so a test can count the host calls a request makes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::host::{Host, LogLevel, MetricType, Status};
use crate::envoy_filter_state::decode;

/// One host call, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    GetProperty(String),
    SetProperty(String, String),
    GetHeader(String),
    SetHeader(String, String),
    RemoveHeader(String),
    LocalResponse(u16, String),
    PluginConfiguration,
    DefineMetric(String),
    IncrementMetric(String, i64),
    RecordMetric(String),
    SetTickPeriod(Duration),
    LogLevel,
    FollowLogLevel(LogLevel),
    ForeignFunction(String),
}

/// Picks the calls a test makes fail.
pub type CallMatcher = fn(&Call) -> bool;

/// Headers Envoy's header map joins with a comma when a line repeats.
const JOINED_AS_THEY_ARRIVE: &[&str] = &["x-forwarded-for"];

#[derive(Default)]
struct State {
    properties: RefCell<BTreeMap<String, Vec<u8>>>,
    headers: RefCell<Vec<(String, Vec<u8>)>>,
    configuration: RefCell<Option<Vec<u8>>>,
    calls: RefCell<Vec<Call>>,
    metrics: RefCell<Vec<(String, u64)>>,
    /// Calls that fail, and with what.
    failing: RefCell<Vec<(CallMatcher, Status)>>,
    log_level: Cell<Option<LogLevel>>,
    /// Whether this Envoy lacks `envoy.network.ip` (or the foreign function).
    without_ip_object: Cell<bool>,
    /// Whether a request is being served (filter state needs one).
    in_request: Cell<bool>,
    local_reply: RefCell<Option<(u16, String, Vec<u8>)>>,
}

/// A handle on one mock Envoy; clones share it, as contexts share a host.
#[derive(Clone, Default)]
pub struct MockHost(Rc<State>);

/// A property path as the recorded calls show it.
fn dotted(path: &[&str]) -> String {
    path.join(".")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl MockHost {
    pub fn with_root_id(self, root_id: &str) -> Self {
        self.with_property(&["plugin_root_id"], root_id.as_bytes())
    }

    pub fn with_configuration(self, json: &str) -> Self {
        *self.0.configuration.borrow_mut() = Some(json.as_bytes().to_vec());
        self
    }

    pub fn with_property(self, path: &[&str], value: &[u8]) -> Self {
        self.0
            .properties
            .borrow_mut()
            .insert(dotted(path), value.to_vec());
        self
    }

    /// Adds a request header line, as a client sends it.
    pub fn with_header(self, name: &str, value: &[u8]) -> Self {
        let name = name.to_ascii_lowercase();
        {
            let mut headers = self.0.headers.borrow_mut();
            let joined = JOINED_AS_THEY_ARRIVE.contains(&name.as_str());
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, value_so_far)) if joined => {
                    value_so_far.push(b',');
                    value_so_far.extend_from_slice(value);
                }
                _ => headers.push((name, value.to_vec())),
            }
        }
        self
    }

    pub fn with_log_level(self, level: LogLevel) -> Self {
        self.0.log_level.set(Some(level));
        self
    }

    pub fn without_ip_object(self) -> Self {
        self.0.without_ip_object.set(true);
        self
    }

    /// Makes every call that `matches` fail with `status`.
    pub fn failing(self, matches: CallMatcher, status: Status) -> Self {
        self.0.failing.borrow_mut().push((matches, status));
        self
    }

    /// Starts a new request: clears the request's headers and state.
    pub fn new_request(&self) {
        self.0.headers.borrow_mut().clear();
        self.0.local_reply.take();
        self.0
            .properties
            .borrow_mut()
            .retain(|path, _| !path.starts_with("filter_state.envoy.network.ip"));
        self.0.in_request.set(true);
    }

    /// Every line of a header, in order.
    pub fn header_lines(&self, name: &str) -> Vec<String> {
        self.0
            .headers
            .borrow()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| text(v))
            .collect()
    }

    /// The header's one line, `None` when absent; a test fails on several.
    pub fn header(&self, name: &str) -> Option<String> {
        let lines = self.header_lines(name);
        assert!(lines.len() <= 1, "{name} has several lines: {lines:?}");
        lines.into_iter().next()
    }

    pub fn property(&self, path: &[&str]) -> Option<String> {
        self.0
            .properties
            .borrow()
            .get(&dotted(path))
            .map(|v| text(v))
    }

    /// A metric's value by name (0 when never defined or touched).
    pub fn metric(&self, name: &str) -> u64 {
        self.0
            .metrics
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, value)| *value)
    }

    pub fn local_reply(&self) -> Option<(u16, String, Vec<u8>)> {
        self.0.local_reply.borrow().clone()
    }

    /// The calls recorded since the last take.
    pub fn take_calls(&self) -> Vec<Call> {
        self.0.calls.take()
    }

    /// Records the call; `Err` when the test made it fail.
    fn call(&self, call: Call) -> Result<(), Status> {
        let failure = self
            .0
            .failing
            .borrow()
            .iter()
            .find(|(matches, _)| matches(&call))
            .map(|(_, status)| *status);
        self.0.calls.borrow_mut().push(call);
        failure.map_or(Ok(()), Err)
    }

    fn metric_name(&self, id: u32) -> Result<String, Status> {
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        index
            .and_then(|index| self.0.metrics.borrow().get(index).map(|(n, _)| n.clone()))
            .ok_or(Status::NotFound)
    }
}

impl Host for MockHost {
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        self.call(Call::GetProperty(dotted(path)))?;
        if let ["request", "headers", name] = path {
            // Envoy's attribute joins every line of the header.
            let lines: Vec<Vec<u8>> = self
                .0
                .headers
                .borrow()
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect();
            return Ok((!lines.is_empty()).then(|| lines.join(&b","[..])));
        }
        Ok(self.0.properties.borrow().get(&dotted(path)).cloned())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status> {
        self.call(Call::SetProperty(dotted(path), text(value)))?;
        self.0.properties.borrow_mut().insert(
            format!("filter_state.wasm.{}", dotted(path)),
            value.to_vec(),
        );
        self.0
            .properties
            .borrow_mut()
            .insert(dotted(path), value.to_vec());
        Ok(())
    }

    fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
        self.call(Call::GetHeader(name.to_owned()))?;
        let headers = self.0.headers.borrow();
        Ok(headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()))
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.call(Call::SetHeader(name.to_owned(), text(value)))?;
        let mut headers = self.0.headers.borrow_mut();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), Status> {
        self.call(Call::RemoveHeader(name.to_owned()))?;
        self.0.headers.borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }

    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        body: &[u8],
        _headers: &[u8],
    ) -> Result<(), Status> {
        self.call(Call::LocalResponse(status, details.to_owned()))?;
        assert!(!details.contains(' '), "details must hold no spaces");
        *self.0.local_reply.borrow_mut() = Some((status, details.to_owned(), body.to_vec()));
        Ok(())
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status> {
        self.call(Call::PluginConfiguration)?;
        Ok(self.0.configuration.borrow().clone())
    }

    fn define_metric(&self, _kind: MetricType, name: &str) -> Result<u32, Status> {
        self.call(Call::DefineMetric(name.to_owned()))?;
        let mut metrics = self.0.metrics.borrow_mut();
        let index = match metrics.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                metrics.push((name.to_owned(), 0));
                metrics.len() - 1
            }
        };
        // Envoy's ids are opaque; these start at 1 and are never 0.
        Ok(u32::try_from(index + 1).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status> {
        let name = self.metric_name(id)?;
        self.call(Call::IncrementMetric(name.clone(), by))?;
        if let Some((_, value)) = self
            .0
            .metrics
            .borrow_mut()
            .iter_mut()
            .find(|(n, _)| *n == name)
        {
            *value = value.wrapping_add_signed(by);
        }
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        let name = self.metric_name(id)?;
        self.call(Call::RecordMetric(name.clone()))?;
        if let Some((_, recorded)) = self
            .0
            .metrics
            .borrow_mut()
            .iter_mut()
            .find(|(n, _)| *n == name)
        {
            *recorded = value;
        }
        Ok(())
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        self.call(Call::SetTickPeriod(period))
    }

    fn log_level(&self) -> Result<LogLevel, Status> {
        self.call(Call::LogLevel)?;
        Ok(self.0.log_level.get().unwrap_or(LogLevel::Info))
    }

    fn follow_log_level(&self, level: LogLevel) {
        self.0.calls.borrow_mut().push(Call::FollowLogLevel(level));
    }

    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, Status> {
        self.call(Call::ForeignFunction(name.to_owned()))?;
        if name != "set_envoy_filter_state" || self.0.without_ip_object.get() {
            return Err(Status::NotFound);
        }
        let arguments = decode(arguments).map_err(|_| Status::BadArgument)?;
        let (path, value) = (text(arguments.path), arguments.value.to_vec());
        if path != "envoy.network.ip" {
            return Err(Status::NotFound);
        }
        // The factory builds the object first: a value that is no IP fails
        // even where there is no request to hold it.
        if std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse::<std::net::IpAddr>().ok())
            .is_none()
        {
            return Err(Status::BadArgument);
        }
        if !self.0.in_request.get() {
            return Err(Status::NotFound);
        }
        self.0
            .properties
            .borrow_mut()
            .insert(format!("filter_state.{path}"), value);
        Ok(None)
    }
}
