//! A host for unit tests: it answers from maps, applies header writes, and
//! records every call, so a test can run the whole request flow and count
//! the host calls each configuration makes per request.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::host::{Host, MetricKind, Status};

/// One host call, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    GetProperty(String),
    SetProperty(String, String),
    GetHeader(String),
    SetHeader(String, String),
    RemoveHeader(String),
    LocalResponse(u16),
    PluginConfiguration,
    DefineMetric(String),
    IncrementMetric(u32, u64),
    RecordMetric(u32),
    SetTickPeriod(u32),
}

#[derive(Default)]
pub struct MockHost {
    pub properties: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    pub headers: RefCell<BTreeMap<String, Vec<u8>>>,
    pub configuration: Vec<u8>,
    pub calls: RefCell<Vec<Call>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', ".")
}

impl MockHost {
    pub fn with_property(self, path: &[u8], value: &str) -> Self {
        self.properties
            .borrow_mut()
            .insert(path.to_vec(), value.as_bytes().to_vec());
        self
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.headers
            .borrow_mut()
            .insert(name.to_owned(), value.as_bytes().to_vec());
        self
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.borrow().get(name).map(|v| text(v))
    }

    pub fn property(&self, path: &[u8]) -> Option<String> {
        self.properties.borrow().get(path).map(|v| text(v))
    }

    /// The calls recorded since the last take.
    pub fn take_calls(&self) -> Vec<Call> {
        self.calls.take()
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }
}

impl Host for MockHost {
    fn get_property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        self.record(Call::GetProperty(text(path)));
        Ok(self.properties.borrow().get(path).cloned())
    }

    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status> {
        self.record(Call::SetProperty(text(path), text(value)));
        self.properties
            .borrow_mut()
            .insert(path.to_vec(), value.to_vec());
        Ok(())
    }

    fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
        self.record(Call::GetHeader(name.to_owned()));
        Ok(self.headers.borrow().get(name).cloned())
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.record(Call::SetHeader(name.to_owned(), text(value)));
        self.headers
            .borrow_mut()
            .insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), Status> {
        self.record(Call::RemoveHeader(name.to_owned()));
        self.headers.borrow_mut().remove(name);
        Ok(())
    }

    fn send_local_response(
        &self,
        status: u16,
        _details: &str,
        _body: &[u8],
        _headers: &[u8],
    ) -> Result<(), Status> {
        self.record(Call::LocalResponse(status));
        Ok(())
    }

    fn plugin_configuration(&self, _size: usize) -> Result<Vec<u8>, Status> {
        self.record(Call::PluginConfiguration);
        Ok(self.configuration.clone())
    }

    fn define_metric(&self, _kind: MetricKind, name: &str) -> Result<u32, Status> {
        self.record(Call::DefineMetric(name.to_owned()));
        let calls = self.calls.borrow();
        let defined = calls
            .iter()
            .filter(|c| matches!(c, Call::DefineMetric(_)))
            .count();
        Ok(u32::try_from(defined).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), Status> {
        self.record(Call::IncrementMetric(id, by));
        Ok(())
    }

    fn record_metric(&self, id: u32, _value: u64) -> Result<(), Status> {
        self.record(Call::RecordMetric(id));
        Ok(())
    }

    fn set_tick_period_milliseconds(&self, period: u32) -> Result<(), Status> {
        self.record(Call::SetTickPeriod(period));
        Ok(())
    }
}
