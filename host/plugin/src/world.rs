//! The plugin worlds, and the checks a component passes before it is instantiated: it must be
//! built against the WIT version this host serves, export its world's interfaces, and import
//! nothing of Flotilla's that its world does not offer.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::{Failure, WIT_PACKAGE, WIT_VERSION};

/// A plugin world from `wit/plugin/worlds.wit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum World {
    SchedulerPolicy,
    Controller,
    AdmissionPolicy,
    ProxyStrategy,
    /// Only `meta`: any plugin can be probed.
    Probe,
}

impl World {
    /// The world's name in WIT, which is also the `kind` of a WasmPlugin object.
    pub fn name(self) -> &'static str {
        match self {
            World::SchedulerPolicy => "scheduler-policy",
            World::Controller => "controller",
            World::AdmissionPolicy => "admission-policy",
            World::ProxyStrategy => "proxy-strategy",
            World::Probe => "probe",
        }
    }

    pub fn from_name(name: &str) -> Option<World> {
        [
            World::SchedulerPolicy,
            World::Controller,
            World::AdmissionPolicy,
            World::ProxyStrategy,
            World::Probe,
        ]
        .into_iter()
        .find(|w| w.name() == name)
    }

    /// Whether the world's calls run directly on the caller's thread, without a fiber, its
    /// instances linked with imports that never wait (`nowait`): only the proxy strategy's,
    /// whose picks are on every request's path.
    pub(crate) fn calls_directly(self) -> bool {
        self == World::ProxyStrategy
    }

    /// The interfaces of `flotilla:plugin` the world exports.
    fn exports(self) -> &'static [&'static str] {
        match self {
            World::SchedulerPolicy => &["meta", "scheduler"],
            World::Controller => &["meta", "reconciler"],
            World::AdmissionPolicy => &["meta", "admission"],
            World::ProxyStrategy => &["meta", "strategy"],
            World::Probe => &["meta"],
        }
    }

    /// The interfaces of `flotilla:plugin` the world lets a plugin import.
    fn imports(self) -> &'static [&'static str] {
        match self {
            World::SchedulerPolicy => &["types", "log", "clock", "config", "scheduling"],
            World::Controller => &["types", "log", "clock", "config", "cache", "api"],
            World::AdmissionPolicy => &["types", "log", "clock", "config", "cache", "api"],
            World::ProxyStrategy => &[
                "types",
                "log",
                "clock",
                "config",
                "balancing",
                "endpoint-load",
            ],
            // Probing only reads `meta`; whatever world the plugin is for is acceptable.
            World::Probe => &[
                "types",
                "log",
                "clock",
                "config",
                "scheduling",
                "cache",
                "api",
                "balancing",
                "endpoint-load",
            ],
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Splits `flotilla:plugin/<interface>@<version>`.
fn ours(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

/// Whether a plugin built against `version` of the package can run here: the same major and
/// minor version as this host's, and a patch version no newer. Such versions only add
/// functions (`wit/VERSIONS`), and wasmtime links a plugin's older imports and exports to
/// this host's newer ones.
pub(crate) fn compatible(version: &str) -> bool {
    fn parts(version: &str) -> Option<(u64, u64, u64)> {
        let mut it = version.split('.').map(|p| p.parse::<u64>().ok());
        let parsed = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(parsed)
    }
    let (Some(found), Some(ours)) = (parts(version), parts(WIT_VERSION)) else {
        return false;
    };
    found.0 == ours.0 && found.1 == ours.1 && found.2 <= ours.2
}

/// Checks a compiled component against a world, before anything is instantiated.
pub(crate) fn check(engine: &Engine, component: &Component, world: World) -> Result<(), Failure> {
    let ty = component.component_type();
    let mut exported = Vec::new();
    for (name, _) in ty.exports(engine) {
        if let Some((interface, version)) = ours(name) {
            if !compatible(version) {
                return Err(Failure::Incompatible {
                    found: version.to_owned(),
                });
            }
            exported.push(interface.to_owned());
        }
    }
    if exported.is_empty() {
        return Err(Failure::WrongWorld {
            world,
            message: format!("it exports no {WIT_PACKAGE} interface; is it a Flotilla plugin?"),
        });
    }
    for wanted in world.exports() {
        if !exported.iter().any(|e| e == wanted) {
            return Err(Failure::WrongWorld {
                world,
                message: format!("it exports {} but not {wanted}", exported.join(", ")),
            });
        }
    }
    for (name, _) in ty.imports(engine) {
        if let Some((interface, version)) = ours(name) {
            if !compatible(version) {
                return Err(Failure::Incompatible {
                    found: version.to_owned(),
                });
            }
            if !world.imports().contains(&interface) {
                return Err(Failure::WrongWorld {
                    world,
                    message: format!(
                        "it imports {WIT_PACKAGE}/{interface}, which the {world} world does not offer"
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_patch_versions_are_compatible_and_others_are_not() {
        assert!(compatible(WIT_VERSION));
        assert!(compatible("0.1.0"));
        for refused in [
            "0.1.99",
            "0.2.0",
            "1.1.0",
            "0.0.9",
            "0.1",
            "0.1.0-rc1",
            "",
            "x.y.z",
        ] {
            assert!(!compatible(refused), "{refused} passed as compatible");
        }
    }
}
