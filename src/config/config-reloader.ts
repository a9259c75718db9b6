import { ConfigError } from "./load-config.js";
import { watchFiles } from "./watch-files.js";
import type { FileWatch } from "./watch-files.js";

/** The logging the reloader needs (pino's shape). */
export interface ReloadLog {
  info(facts: Record<string, unknown>, msg: string): void;
  error(facts: Record<string, unknown>, msg: string): void;
}

/** Applies a changed configuration without a restart. */
export interface ConfigReloader {
  /**
   * Reads the config file again (when `file`) and the JWT keys (when `keys`), and applies what
   * is valid; a file with any problem is refused whole, logged with every problem, and the
   * configuration in force kept. Resolves true when everything asked for was applied. Reloads
   * run one at a time, in order.
   */
  reload(what: { file: boolean; keys: boolean }): Promise<boolean>;
  /** Stops watching the files. */
  close(): void;
}

/** What the reloader reads, watches and applies to. */
export interface ConfigReloaderOptions<Sections> {
  /** GATEWAY_CONFIG_FILE; undefined = no file to reload. */
  configFile: string | undefined;
  /** Reads and validates the file's reloadable sections; throws a ConfigError with every problem. */
  read(path: string): Sections;
  /** Puts valid sections in force (must not throw); returns facts for the log line. */
  apply(sections: Sections): Record<string, unknown>;
  /** JWT_KEY_FILE, watched too; undefined = none. */
  keyFile: string | undefined;
  /** Re-reads the JWT keys (the key file, or the JWKS); rejects, keeping the old keys, when unusable. */
  reloadKeys: (() => Promise<void>) | undefined;
  /** How often the files are checked; 0 = never (SIGHUP only). */
  watchIntervalMs: number;
  log: ReloadLog;
}

/**
 * Reload without restart (README "Reload"): principals, keys, permissions, limits and model
 * aliases from the config file, on a change of the file or of the JWT key file (polled, see `watchFiles`) and
 * whenever `reload` is called (SIGHUP). What is applied governs the next calls; running calls
 * keep what they were admitted with, so a stream is never cut by a reload.
 */
export function createConfigReloader<Sections>(options: ConfigReloaderOptions<Sections>): ConfigReloader {
  const { log } = options;
  let queue: Promise<boolean> = Promise.resolve(true);

  async function apply(what: { file: boolean; keys: boolean }): Promise<boolean> {
    let ok = true;
    if (what.file && options.configFile !== undefined) {
      try {
        const facts = options.apply(options.read(options.configFile));
        log.info({ file: options.configFile, ...facts }, "config file reloaded");
      } catch (e) {
        ok = false;
        const problems = e instanceof ConfigError ? e.problems : [e instanceof Error ? e.message : String(e)];
        log.error({ file: options.configFile, problems }, "config file refused: keeping the configuration in force");
      }
    }
    if (what.keys && options.reloadKeys !== undefined) {
      try {
        await options.reloadKeys();
        log.info({}, "JWT keys reloaded");
      } catch (e) {
        ok = false;
        log.error({ error: e instanceof Error ? e.message : String(e) }, "JWT keys refused: keeping the previous keys");
      }
    }
    return ok;
  }

  const reload = (what: { file: boolean; keys: boolean }): Promise<boolean> => {
    queue = queue.then(() => apply(what));
    return queue;
  };

  const watched = [options.configFile, options.keyFile].filter((f): f is string => f !== undefined);
  let watch: FileWatch | undefined;
  if (options.watchIntervalMs > 0 && watched.length > 0) {
    watch = watchFiles(watched, options.watchIntervalMs, (changed) => {
      void reload({
        file: changed.includes(options.configFile ?? ""),
        keys: changed.includes(options.keyFile ?? ""),
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
