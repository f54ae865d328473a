package webex

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxListPage is the largest page Webex lists (ListQuery.Max).
const MaxListPage = 1000

// ListQuery selects the messages of one room, newest first, as Webex's
// GET /messages does.
type ListQuery struct {
	// RoomID is the room to list. Required.
	RoomID string
	// ParentID lists only the replies of one thread.
	ParentID string
	// Before lists only messages sent before this time (zero: no bound).
	Before time.Time
	// BeforeMessage lists only messages sent before this message id.
	BeforeMessage string
	// Max is the page size: Webex's default when 0, at most MaxListPage.
	Max int
}

// MessagePage is one page of a listing. Next follows Webex's Link header
// to the following page.
type MessagePage struct {
	// Items are the page's messages, newest first.
	Items []Sent `json:"items"`
	// Response is what the answer said besides its body.
	Response Response `json:"-"`
	next     string
}

// HasNext reports whether Webex announced a following page.
func (p *MessagePage) HasNext() bool { return p.next != "" }

// ListMessages reads the first page of a room's messages:
//
//	page, err := c.ListMessages(ctx, webex.ListQuery{RoomID: room, Max: 50})
//	for err == nil {
//		use(page.Items)
//		if !page.HasNext() {
//			break
//		}
//		page, err = c.NextMessages(ctx, page)
//	}
func (c *Client) ListMessages(ctx context.Context, q ListQuery) (*MessagePage, error) {
	if q.RoomID == "" {
		return nil, errors.New("list messages: RoomID is required")
	}
	if q.Max < 0 || q.Max > MaxListPage {
		return nil, fmt.Errorf("list messages: Max is %d, must be from 0 (Webex's default) to %d", q.Max, MaxListPage)
	}
	v := url.Values{"roomId": {q.RoomID}}
	if q.ParentID != "" {
		v.Set("parentId", q.ParentID)
	}
	if !q.Before.IsZero() {
		v.Set("before", q.Before.UTC().Format(time.RFC3339Nano))
	}
	if q.BeforeMessage != "" {
		v.Set("beforeMessage", q.BeforeMessage)
	}
	if q.Max > 0 {
		v.Set("max", strconv.Itoa(q.Max))
	}
	page, err := c.listPage(ctx, c.base+"/messages?"+v.Encode())
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	return page, nil
}

// NextMessages reads the page after p. It fails when p has no next page, or
// when the next page's URL is not under the client's base URL: the token is
// only ever sent there.
func (c *Client) NextMessages(ctx context.Context, p *MessagePage) (*MessagePage, error) {
	if p == nil || p.next == "" {
		return nil, errors.New("list messages: no next page")
	}
	if !strings.HasPrefix(p.next, c.base+"/") {
		return nil, fmt.Errorf("list messages: the next page is not under the base URL %s", c.base)
	}
	page, err := c.listPage(ctx, p.next)
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	return page, nil
}

func (c *Client) listPage(ctx context.Context, target string) (*MessagePage, error) {
	var page MessagePage
	var link string
	resp, err := c.doURL(ctx, http.MethodGet, target, "/messages", nil, &page, func(h http.Header) { link = h.Get("Link") })
	if err != nil {
		return nil, err
	}
	page.Response = resp
	page.next = nextLink(link)
	return &page, nil
}

// nextLink finds the rel="next" target of a Link header (RFC 8288):
// `<https://…>; rel="next", <…>; rel="prev"`.
func nextLink(header string) string {
	for _, link := range strings.Split(header, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(link), ";")
		if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			continue
		}
		for _, p := range strings.Split(params, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(k, "rel") && strings.EqualFold(strings.Trim(v, `"`), "next") {
				return target[1 : len(target)-1]
			}
		}
	}
	return ""
}
