//! The registry: every service of a replica, by [`ServiceId`], behind one object-safe face.
//!
//! Services are typed ([`Service`] has associated types and constants, so it is not object
//! safe); the registry holds them as boxed [`ErasedService`]s, which every `Service` is through a
//! blanket impl. A payload is routed by its first four bytes and decoded once, here, under the
//! service's bound; the decoded request travels as a [`Decoded`] to [`Registry::apply`], which
//! hands it back to the same service. Each request runs against an [`Overlay`] of the service's
//! own tables, so a refused request leaves nothing behind.

use std::any::Any;

use crate::interface::{
    Applied, Code, Decision, EpochStart, InstanceId, Outcome, QueryError, Refusal, Service, ServiceId, RESERVED_IDS,
};
use crate::tables::{Namespaced, Overlay, ReadOnly, StoreError, Tables};

/// A decoded request, as the registry passes it from [`Registry::route`] to [`Registry::apply`].
pub struct Decoded {
    service: ServiceId,
    request: Box<dyn Any + Send>,
}

impl Decoded {
    /// The service it is for.
    pub fn service(&self) -> ServiceId {
        self.service
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded").field("service", &self.service).finish_non_exhaustive()
    }
}

/// Where a payload goes.
#[derive(Debug)]
pub enum Route {
    /// To no service: its first bytes name none (the ordering answer is all it gets).
    Unrouted,
    /// To a service that cannot take it (too long, or it does not decode).
    Refused {
        /// The service its first bytes name.
        service: ServiceId,
        /// Why.
        refusal: Refusal,
    },
    /// To a service, decoded.
    Request(Decoded),
}

/// The object-safe face of a [`Service`] (every `Service` is one).
pub trait ErasedService: Send + Sync {
    /// [`Service::ID`].
    fn id(&self) -> ServiceId;
    /// [`Service::NAME`].
    fn name(&self) -> &'static str;
    /// [`Service::TABLES`].
    fn tables(&self) -> &'static [&'static str];
    /// Check the bound and decode.
    fn decode_erased(&self, payload: &[u8]) -> Result<Box<dyn Any + Send>, Refusal>;
    /// [`Service::apply`] on a request this service decoded.
    fn apply_erased(
        &self,
        tables: &mut dyn Tables,
        at: &Applied,
        request: Box<dyn Any + Send>,
    ) -> Result<Vec<Outcome>, StoreError>;
    /// [`Service::begin_epoch`].
    fn begin_epoch_erased(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError>;
    /// [`Service::validate`].
    fn validate_erased(&self, instance: InstanceId, justification: &[u8]) -> bool;
    /// [`Service::decided`].
    fn decided_erased(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError>;
    /// The service itself, for [`Registry::get`].
    fn as_any(&self) -> &dyn Any;
}

impl<S: Service> ErasedService for S {
    fn id(&self) -> ServiceId {
        S::ID
    }

    fn name(&self) -> &'static str {
        S::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        S::TABLES
    }

    fn decode_erased(&self, payload: &[u8]) -> Result<Box<dyn Any + Send>, Refusal> {
        if payload.len() > S::PAYLOAD_MAX {
            return Err(Refusal::new(
                Code::InvalidArgument,
                format!("a {} request of {} bytes is above the bound of {}", S::NAME, payload.len(), S::PAYLOAD_MAX),
            ));
        }
        match self.decode(payload) {
            Ok(request) => Ok(Box::new(request)),
            Err(error) => Err(Refusal::new(Code::InvalidArgument, format!("malformed {} request: {error}", S::NAME))),
        }
    }

    fn apply_erased(
        &self,
        tables: &mut dyn Tables,
        at: &Applied,
        request: Box<dyn Any + Send>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let request = request
            .downcast::<S::Request>()
            .unwrap_or_else(|_| panic!("the registry hands {} only requests it decoded", S::NAME));
        self.apply(tables, at, *request)
    }

    fn begin_epoch_erased(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        self.begin_epoch(tables, at)
    }

    fn validate_erased(&self, instance: InstanceId, justification: &[u8]) -> bool {
        self.validate(instance, justification)
    }

    fn decided_erased(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        self.decided(tables, decision)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Why a service cannot be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another service has its id.
    #[error("service id {0} is taken")]
    IdTaken(ServiceId),
    /// Another service has its name (its tables would be shared).
    #[error("service name {0} is taken")]
    NameTaken(&'static str),
    /// Its id is one the host keeps for its own payloads.
    #[error("service id {0} is reserved for the host")]
    IdReserved(ServiceId),
    /// Its name is empty or not lowercase letters and digits.
    #[error("service name {0:?} is not lowercase letters and digits")]
    BadName(&'static str),
}

/// One ordered request of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Ordered<'a> {
    /// The client.
    pub client: u64,
    /// The client's id for it.
    pub request: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// What a batch made, for the host to route.
#[derive(Debug, Default)]
pub struct BatchOutcomes {
    /// What each service's [`Service::begin_epoch`] made, in registry order.
    pub epoch: Vec<(ServiceId, Vec<Outcome>)>,
    /// Each request by its index in the batch: the service it went to (`None`: no service) and
    /// its outcomes.
    pub requests: Vec<(u32, Option<ServiceId>, Vec<Outcome>)>,
}

/// Every service of a replica.
#[derive(Default)]
pub struct Registry {
    services: Vec<Box<dyn ErasedService>>,
}

impl Registry {
    /// No services.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Add `service`. Registration order is the order of [`Registry::begin_epoch`] (equal at every
    /// replica, as the code that registers is).
    pub fn register<S: Service>(&mut self, service: S) -> Result<(), RegistryError> {
        if S::NAME.is_empty() || !S::NAME.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(RegistryError::BadName(S::NAME));
        }
        // The host's own tables are `replica_…`: a service of that name could reach them.
        if S::NAME == "replica" {
            return Err(RegistryError::NameTaken(S::NAME));
        }
        if RESERVED_IDS.contains(&S::ID) {
            return Err(RegistryError::IdReserved(S::ID));
        }
        if self.services.iter().any(|s| s.id() == S::ID) {
            return Err(RegistryError::IdTaken(S::ID));
        }
        if self.services.iter().any(|s| s.name() == S::NAME) {
            return Err(RegistryError::NameTaken(S::NAME));
        }
        self.services.push(Box::new(service));
        Ok(())
    }

    /// The registered services' ids, in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.services.iter().map(|s| s.id())
    }

    /// Every table of every service, by its name in the store (the host creates them).
    pub fn store_tables(&self) -> Vec<String> {
        self.services.iter().flat_map(|s| s.tables().iter().map(move |t| format!("{}_{t}", s.name()))).collect()
    }

    /// The service of type `S`, if registered (for its queries and its gRPC adapter).
    pub fn get<S: Service>(&self) -> Option<&S> {
        self.services.iter().find_map(|s| s.as_any().downcast_ref::<S>())
    }

    fn service(&self, id: ServiceId) -> Option<&dyn ErasedService> {
        self.services.iter().find(|s| s.id() == id).map(|s| s.as_ref())
    }

    /// Route and decode a payload (once: the result goes to [`Registry::apply`]).
    pub fn route(&self, payload: &[u8]) -> Route {
        let Some(id) = payload.get(..4).and_then(|tag| <[u8; 4]>::try_from(tag).ok()).map(ServiceId) else {
            return Route::Unrouted;
        };
        let Some(service) = self.service(id) else { return Route::Unrouted };
        match service.decode_erased(payload) {
            Ok(request) => Route::Request(Decoded { service: id, request }),
            Err(refusal) => Route::Refused { service: id, refusal },
        }
    }

    /// Apply a decoded request to its service's tables in `store`, all or nothing: if the service
    /// refuses, its writes are dropped and the refusal is the only outcome.
    pub fn apply(&self, store: &mut dyn Tables, at: &Applied, decoded: Decoded) -> Result<Vec<Outcome>, StoreError> {
        let service =
            self.service(decoded.service).expect("a Decoded comes from this registry's route, so its service is here");
        let mut overlay = Overlay::new(store);
        let outcomes = {
            let mut tables = Namespaced::new(&mut overlay, service.name(), service.tables());
            service.apply_erased(&mut tables, at, decoded.request)?
        };
        if let Some(refusal) = outcomes.iter().find(|o| matches!(o, Outcome::Refuse(_))) {
            return Ok(vec![refusal.clone()]);
        }
        overlay.commit()?;
        Ok(outcomes)
    }

    /// Every service's [`Service::begin_epoch`], in registration order.
    pub fn begin_epoch(
        &self,
        store: &mut dyn Tables,
        at: &EpochStart,
    ) -> Result<Vec<(ServiceId, Vec<Outcome>)>, StoreError> {
        let mut out = Vec::with_capacity(self.services.len());
        for service in &self.services {
            let mut tables = Namespaced::new(store, service.name(), service.tables());
            out.push((service.id(), service.begin_epoch_erased(&mut tables, at)?));
        }
        Ok(out)
    }

    /// Hand `decision` to the service that asked for its instance (`None`: no such service).
    pub fn decided(
        &self,
        store: &mut dyn Tables,
        service: ServiceId,
        decision: &Decision,
    ) -> Result<Option<Vec<Outcome>>, StoreError> {
        let Some(service) = self.service(service) else { return Ok(None) };
        let mut tables = Namespaced::new(store, service.name(), service.tables());
        service.decided_erased(&mut tables, decision).map(Some)
    }

    /// Whether `justification` makes a vote for 1 in `service`'s instance `instance` valid
    /// ([`Service::validate`]); false for a service not registered here.
    pub fn validate(&self, service: ServiceId, instance: InstanceId, justification: &[u8]) -> bool {
        self.service(service).is_some_and(|s| s.validate_erased(instance, justification))
    }

    /// Apply one batch: every service's epoch start, then each request in order. The host calls
    /// this inside one store transaction and commits it before answering anyone.
    pub fn apply_batch<'p>(
        &self,
        store: &mut dyn Tables,
        epoch: u64,
        time_ms: u64,
        requests: impl IntoIterator<Item = Ordered<'p>>,
    ) -> Result<BatchOutcomes, StoreError> {
        let mut out =
            BatchOutcomes { epoch: self.begin_epoch(store, &EpochStart { epoch, time_ms })?, requests: Vec::new() };
        for (index, ordered) in requests.into_iter().enumerate() {
            let index = u32::try_from(index).expect("a batch holds fewer than 2^32 requests");
            let entry = match self.route(ordered.payload) {
                Route::Unrouted => (index, None, Vec::new()),
                Route::Refused { service, refusal } => (index, Some(service), vec![Outcome::Refuse(refusal)]),
                Route::Request(decoded) => {
                    let at = Applied {
                        epoch,
                        index,
                        time_ms,
                        client: ordered.client,
                        request: ordered.request,
                        payload_digest: fides_crypto::sha256(ordered.payload),
                    };
                    let service = decoded.service();
                    (index, Some(service), self.apply(store, &at, decoded)?)
                }
            };
            out.requests.push(entry);
        }
        Ok(out)
    }

    /// Ask service `S` a question, over a read-only view of its tables in `store`.
    pub fn query<S: Service>(&self, store: &dyn Tables, query: S::Query) -> Result<S::View, QueryError> {
        let service = self.get::<S>().ok_or_else(|| {
            QueryError::Refused(Refusal::new(Code::Unimplemented, format!("no {} service here", S::NAME)))
        })?;
        let mut read = ReadOnly(store);
        let tables = Namespaced::new(&mut read, S::NAME, S::TABLES);
        service.query(&tables, query)
    }
}
