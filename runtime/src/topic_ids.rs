//! Kafka topic IDs (KIP-516): the identity of a topic *incarnation*. A topic
//! deleted and created again under the same name gets a new ID, and its
//! offsets start again at 0, so positions of the old one mean nothing in
//! the new one. Kafka's own clients compare topic IDs to notice this;
//! librdkafka keeps reading a recreated topic at the old offset without a
//! word (records below that offset are silently skipped), so the gateway
//! compares the IDs itself.
//!
//! rust-rdkafka has no DescribeTopics; librdkafka's C API does
//! (`rd_kafka_DescribeTopics`, librdkafka >= 2.3). This module is the one
//! place in Herald that calls librdkafka directly: a written-by-hand FFI
//! wrapper because no crate of the field exposes topic IDs, kept to one
//! function that owns every pointer it creates and frees them on all paths.
#![allow(unsafe_code)]

use std::{
    collections::HashMap,
    ffi::{CStr, CString, c_char},
    time::Duration,
};

use rdkafka::{ClientContext, bindings as rd, client::Client};

/// Why topic IDs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicIdError {
    /// A topic name with a NUL byte.
    #[error("topic name {0:?} contains a NUL byte")]
    BadName(String),
    /// No answer in time.
    #[error("DescribeTopics timed out")]
    Timeout,
    /// The request failed as a whole.
    #[error("DescribeTopics failed: {0}")]
    Failed(String),
}

/// What the cluster says of one topic: its ID and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The incarnation.
    pub id: TopicId,
    /// Partition numbers, ascending (empty when missing).
    pub partitions: Vec<i32>,
}

/// A topic's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicId {
    /// The topic exists with this ID (base64, as Kafka's tools print it).
    Id(String),
    /// The topic exists but the broker gave no ID (a broker before 2.8).
    Unknown,
    /// The topic does not exist.
    Missing,
}

/// Owns a librdkafka object and destroys it on drop.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the matching librdkafka constructor
            // and is destroyed exactly once, here.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// The ID and partitions of each of `topics`, asked through `client`'s
/// connections (one Metadata request for just these topics). A topic
/// absent from the answer could not be described (e.g. not authorized).
pub fn describe<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, TopicInfo>, TopicIdError> {
    let mut out = HashMap::new();
    if topics.is_empty() {
        return Ok(out);
    }
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()).map_err(|_| TopicIdError::BadName(t.clone())))
        .collect::<Result<_, _>>()?;
    let mut name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every pointer passed below is either one librdkafka returned
    // (checked for null, owned by an `Owned` that frees it after use) or
    // points into `names`/`name_ptrs`, which outlive the calls; librdkafka
    // copies the names into the collection. `rk` is the live client handle
    // of `client`, borrowed for the duration of this function.
    unsafe {
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(
                name_ptrs.as_mut_ptr(),
                name_ptrs.len(),
            ),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        let queue = Owned {
            ptr: rd::rd_kafka_queue_new(rk),
            destroy: rd::rd_kafka_queue_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            destroy: rd::rd_kafka_AdminOptions_destroy,
        };
        if collection.ptr.is_null() || queue.ptr.is_null() || options.ptr.is_null() {
            return Err(TopicIdError::Failed("cannot create the request".into()));
        }
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        let event = Owned {
            ptr: rd::rd_kafka_queue_poll(queue.ptr, timeout_ms.saturating_add(1000)),
            destroy: rd::rd_kafka_event_destroy,
        };
        if event.ptr.is_null() {
            return Err(TopicIdError::Timeout);
        }
        if rd::rd_kafka_event_error(event.ptr)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let msg = rd::rd_kafka_event_error_string(event.ptr);
            return Err(TopicIdError::Failed(text(msg)));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            return Err(TopicIdError::Failed("not a DescribeTopics result".into()));
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        for i in 0..count {
            let d = *descriptions.add(i);
            if d.is_null() {
                continue;
            }
            let name = text(rd::rd_kafka_TopicDescription_name(d));
            let err = rd::rd_kafka_TopicDescription_error(d);
            let code = if err.is_null() {
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            } else {
                rd::rd_kafka_error_code(err)
            };
            if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                out.insert(
                    name,
                    TopicInfo {
                        id: TopicId::Missing,
                        partitions: Vec::new(),
                    },
                );
                continue;
            }
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                // Not allowed, or not known right now: no information.
                continue;
            }
            let mut n = 0usize;
            let parts = rd::rd_kafka_TopicDescription_partitions(d, &mut n);
            let mut partitions = Vec::with_capacity(n);
            for j in 0..n {
                let p = *parts.add(j);
                if !p.is_null() {
                    partitions.push(rd::rd_kafka_TopicPartitionInfo_partition(p));
                }
            }
            partitions.sort_unstable();
            let id = {
                let uuid = rd::rd_kafka_TopicDescription_topic_id(d);
                if uuid.is_null()
                    || (rd::rd_kafka_Uuid_most_significant_bits(uuid) == 0
                        && rd::rd_kafka_Uuid_least_significant_bits(uuid) == 0)
                {
                    TopicId::Unknown
                } else {
                    // librdkafka prints standard base64; Kafka's tools
                    // (and logs) print the URL-safe form without padding.
                    let id: String = text(rd::rd_kafka_Uuid_base64str(uuid))
                        .chars()
                        .filter(|c| *c != '=')
                        .map(|c| match c {
                            '+' => '-',
                            '/' => '_',
                            c => c,
                        })
                        .collect();
                    TopicId::Id(id)
                }
            };
            if partitions.is_empty() {
                // Being created or deleted: not usable yet.
                out.insert(
                    name,
                    TopicInfo {
                        id: TopicId::Missing,
                        partitions,
                    },
                );
                continue;
            }
            out.insert(name, TopicInfo { id, partitions });
        }
    }
    Ok(out)
}

/// A C string librdkafka owns, copied (empty when null).
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for the duration of the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
