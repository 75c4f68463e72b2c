/**
 * A usage plan's throttle, per caller: a token bucket of `rate` requests a
 * second holding at most `burst`, as API Gateway's usage plans do. Pure but
 * for the clock, which is injectable, so its arithmetic is tested on its own.
 */
export class Throttle {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  /** `rate` 0 (or less) turns the throttle off. */
  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Seconds to wait, or 0 when the request may go (and is counted). */
  take(principal: string): number {
    if (this.rate <= 0) return 0;
    const now = this.now();
    const b = this.buckets.get(principal) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
    b.at = now;
    this.buckets.set(principal, b);
    if (b.tokens < 1) return Math.max(1, Math.ceil((1 - b.tokens) / this.rate));
    b.tokens -= 1;
    return 0;
  }
}
