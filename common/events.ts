import { EventEmitter } from 'node:events';

/**
 * Events that the audit pipeline consumes. Producers (xDS server, minter, supervisor, gateway,
 * policy reloader) emit here; the audit writer subscribes. Keep `type` values stable: they are
 * part of the audit schema.
 */
export interface PortcullisEvent {
  /** dotted, stable: `config.nack`, `config.reload_refused`, `sandbox.created`, … */
  type: string;
  /** ISO-8601 time the event happened */
  time: string;
  severity: 'info' | 'warning' | 'error' | 'critical';
  /** component that produced it: `xds-server`, `sds-minter`, `supervisor`, … */
  source: string;
  sessionId?: string;
  data: Record<string, unknown>;
}

export type EventListener = (e: PortcullisEvent) => void;

export interface EventSink {
  emit(event: Omit<PortcullisEvent, 'time'> & { time?: string }): void;
}

/** In-process event bus. Listeners must not throw; a throwing listener is isolated from the others. */
export class EventBus implements EventSink {
  private readonly ee = new EventEmitter();
  private readonly recent: PortcullisEvent[] = [];
  constructor(private readonly keepRecent = 1000) {
    this.ee.setMaxListeners(100);
  }

  emit(event: Omit<PortcullisEvent, 'time'> & { time?: string }): void {
    const full: PortcullisEvent = { ...event, time: event.time ?? new Date().toISOString() };
    this.recent.push(full);
    if (this.recent.length > this.keepRecent) this.recent.shift();
    for (const l of this.ee.listeners('event') as EventListener[]) {
      try {
        l(full);
      } catch {
        // a broken listener must not stop delivery to the others
      }
    }
  }

  on(listener: EventListener): () => void {
    this.ee.on('event', listener);
    return () => this.ee.off('event', listener);
  }

  /** The last events (newest last), optionally filtered by type. */
  history(type?: string): PortcullisEvent[] {
    return type ? this.recent.filter((e) => e.type === type) : [...this.recent];
  }
}
