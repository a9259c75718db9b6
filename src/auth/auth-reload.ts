import { ConfigError, reloadAuthFile } from "../config/load-config.js";
import type { PrincipalEntry } from "../config/auth-file.js";
import { watchFiles } from "../config/watch-files.js";
import type { FileWatch } from "../config/watch-files.js";
import type { Authenticator } from "./authenticator.js";

/** The logging the reloader needs (pino's shape). */
export interface ReloadLog {
  info(facts: Record<string, unknown>, msg: string): void;
  error(facts: Record<string, unknown>, msg: string): void;
}

/** Applies new principals and keys without a restart. */
export interface AuthReloader {
  /**
   * Reads the config file again (and the JWT key file, or refetches the JWKS, when `keys`), and
   * applies what is valid; a file with any problem is refused whole, logged, and the previous
   * principals kept. Resolves true when everything asked for was applied. Reloads run one at a
   * time, in order.
   */
  reload(what: { principals: boolean; keys: boolean }): Promise<boolean>;
  /** Stops watching the files. */
  close(): void;
}

/** What the reloader watches and applies to. */
export interface AuthReloaderOptions {
  authenticator: Authenticator;
  /** The config file holding `principals`, `roles`, `defaultPermissions`; undefined = none to reload. */
  configFile: string | undefined;
  /** API_KEYS' principals, which stay as they were at start (the environment does not change). */
  envPrincipals: readonly PrincipalEntry[];
  /** JWT_KEY_FILE, watched too. */
  jwtKeyFile: string | undefined;
  /** How often the files are checked; 0 = never (SIGHUP only). */
  watchIntervalMs: number;
  log: ReloadLog;
}

/**
 * Reload of principals, keys and permissions (README "Reload"): on a change of the config file
 * or of the JWT key file (polled), and whenever `reload` is called (SIGHUP). Running calls keep
 * the identity they were admitted with (a stream is never cut); the next call of a revoked key
 * fails.
 */
export function createAuthReloader(options: AuthReloaderOptions): AuthReloader {
  const { authenticator, log } = options;
  let queue: Promise<boolean> = Promise.resolve(true);

  async function apply(what: { principals: boolean; keys: boolean }): Promise<boolean> {
    let ok = true;
    if (what.principals && options.configFile !== undefined) {
      try {
        const file = reloadAuthFile(options.configFile, options.envPrincipals);
        authenticator.apply(file);
        const policy = authenticator.policy;
        log.info({ file: options.configFile, principals: policy.principals, keys: policy.keys }, "principals reloaded");
      } catch (e) {
        ok = false;
        const problems = e instanceof ConfigError ? e.problems : [e instanceof Error ? e.message : String(e)];
        log.error({ file: options.configFile, problems }, "config file refused: keeping the previous principals");
      }
    }
    if (what.keys) {
      try {
        await authenticator.reloadKeys();
        log.info({}, "JWT keys reloaded");
      } catch (e) {
        ok = false;
        log.error({ error: e instanceof Error ? e.message : String(e) }, "JWT keys refused: keeping the previous keys");
      }
    }
    return ok;
  }

  const reload = (what: { principals: boolean; keys: boolean }): Promise<boolean> => {
    queue = queue.then(() => apply(what));
    return queue;
  };

  const watched = [options.configFile, options.jwtKeyFile].filter((f): f is string => f !== undefined);
  let watch: FileWatch | undefined;
  if (options.watchIntervalMs > 0 && watched.length > 0) {
    watch = watchFiles(watched, options.watchIntervalMs, (changed) => {
      void reload({
        principals: changed.includes(options.configFile ?? ""),
        keys: changed.includes(options.jwtKeyFile ?? ""),
      });
    });
  }
  return {
    reload,
    close() {
      watch?.close();
    },
  };
}
